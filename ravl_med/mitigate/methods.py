"""Mitigation methods as plug-ins of the fine-tuning loop (:class:`~ravl_med.models.training.Trainer`).

Each method is an objective ``(batch, outputs) -> loss`` and, for upsampling, a sampler factory;
:class:`MitigationTrainer` only extends :meth:`Trainer.forward` with what the objectives read:

* ``class_text_features`` (C, D): class prompts through the text tower being trained (with gradients);
* ``region_features`` (B tensors (R_i, D)) and ``region_is_spurious`` (B bool tensors) for ``ravl``:
  the one-pass :class:`~ravl_med.models.regions.RegionEmbedder`, differentiable through the image
  tower. With a CNN tower outside DDP the image embedding is the whole-image box of the same pass
  (it reproduces ``encode_image``), so the trunk runs once per batch;
* ``group`` (B,) stage-1 group = 2 * class + (image has a spurious region), for ``vl_gdro``;
* ``spurious_text_features`` (P, D) for ``spurious_aware``.

Methods: ``ravl`` (region-aware loss), ``standard`` (the fine-tuning config's contrastive loss),
``upsampled`` (same loss, stage-1 groups sampled equally often), ``vl_erm`` (cross-entropy of the
image against the class texts), ``vl_gdro`` (GroupDRO over stage-1 groups with online
exponentiated-gradient weights), ``spurious_aware`` (contrastive loss plus a term pushing each image
towards its class text and away from texts naming the spurious attribute; project reading of
Yang et al. 2023). ``counterfactual``, ``counterfactual_upsampled`` and ``counterfactual_ravl`` train
the standard, upsampled and RaVL objectives on counterfactual images (the audit's spurious regions moved
across classes, :mod:`ravl_med.mitigate.counterfactual`); ``counterfactual_paste`` and
``counterfactual_paste_upsampled`` only paste them, from carriers outside the tied class;
``oracle_counterfactual`` moves the ground-truth artefact pixels instead (a ceiling).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler

from ravl_med.config import ConfigError
from ravl_med.models.hybrid import CNNImageTower
from ravl_med.models.regions import RegionEmbedder
from ravl_med.models.runtime import DistributedContext, process_rank
from ravl_med.models.training import ContrastiveObjective, Trainer
from ravl_med.models.zeroshot import CXR_TEMPLATES, class_prompts, embed_class_prompts

from .losses import RegionAwareLoss
from .regions import images_with_spurious_region
from .registry import MITIGATION_METHODS

__all__ = [
    "GroupBalancedSampler",
    "GroupDROObjective",
    "MitigationTrainer",
    "RaVLObjective",
    "SpuriousAwareObjective",
    "VLERMObjective",
    "stage1_groups",
]


def stage1_groups(labels: Sequence[int] | np.ndarray, keys: Sequence[str], region_labels: Mapping[str, np.ndarray]) -> np.ndarray:
    """Stage-1 group per image: 2 * class + (at least one region labelled spurious); -1 for unknown labels.

    Args:
        labels: (N,) class index per image (< 0: unknown).
        keys: N image keys.
        region_labels: image key -> (R_i,) bool spurious flags (missing key: no spurious region).

    Returns:
        (N,) int64.
    """
    labels = np.asarray(labels, dtype=np.int64)
    present = images_with_spurious_region(keys, region_labels).astype(np.int64)
    return np.where(labels >= 0, 2 * labels + present, -1)


class GroupBalancedSampler(Sampler):
    """Upsampling: draws indices with replacement so that every stage-1 group is equally likely.

    The epoch has ``len(groups)`` draws in all (split between processes); the same ``set_epoch``
    value gives the same order (needed to resume). Images of unknown group (-1) are never drawn.

    Args:
        groups: (N,) group per dataset row.
        rank, world_size: this process's shard.
        seed: base seed (epoch e uses seed + e).
    """

    def __init__(self, groups: np.ndarray, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        groups = np.asarray(groups, dtype=np.int64)
        known = groups >= 0
        if not known.any():
            raise ValueError("no row has a known stage-1 group")
        counts = np.bincount(groups[known])
        weights = np.zeros(len(groups), dtype=np.float64)
        weights[known] = 1.0 / counts[groups[known]]
        self.weights = torch.as_tensor(weights)
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0
        self.per_process = len(groups) // world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.per_process * self.world_size, replacement=True, generator=generator)
        return iter(draws[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_process


def _group_sampler_factory(region_labels: Mapping[str, np.ndarray]):
    def factory(dataset: Dataset, rank: int, world_size: int, seed: int) -> Sampler:
        groups = stage1_groups(dataset.labels.numpy(), dataset.keys, region_labels)  # type: ignore[attr-defined]
        return GroupBalancedSampler(groups, rank, world_size, seed)

    return factory


# ----------------------------------------------------------------------------- objectives


class RaVLObjective:
    """The region-aware loss (:class:`~ravl_med.mitigate.losses.RegionAwareLoss`) on the trainer's outputs."""

    needs = ("class_text", "regions")

    def __init__(self, lambda_: float = 0.8, temperature: float = 0.07, label_aware: bool = False) -> None:
        rank, world, _ = process_rank()
        self.loss = RegionAwareLoss(lambda_, temperature, rank=rank, world_size=world, label_aware=label_aware)

    def __call__(self, batch: dict[str, Any], outputs: dict[str, Any]) -> torch.Tensor:
        image = outputs["image_features"]
        return self.loss(
            image.float(), outputs["text_features"].float(), outputs["logit_scale"].float(),
            [r.float() for r in outputs["region_features"]], outputs["region_is_spurious"],
            outputs["class_text_features"].float(), batch["label"].to(image.device),
        )


class VLERMObjective:
    """ERM on the zero-shot head: cross-entropy of ``logit_scale * image @ class_text.T`` (unknown labels ignored)."""

    needs = ("class_text",)

    def logits(self, outputs: dict[str, Any]) -> torch.Tensor:
        """(B, C) zero-shot logits."""
        return outputs["logit_scale"].float() * outputs["image_features"].float() @ outputs["class_text_features"].float().T

    def __call__(self, batch: dict[str, Any], outputs: dict[str, Any]) -> torch.Tensor:
        logits = self.logits(outputs)
        return F.cross_entropy(logits, batch["label"].to(logits.device), ignore_index=-1)


class GroupDROObjective(VLERMObjective):
    """GroupDRO (Sagawa et al. 2020) over stage-1 groups on the zero-shot head.

    After each batch the weight of every group present grows as q_g <- q_g exp(step_size * L_g) and
    q is renormalised (no gradient through q); the loss is sum_g q_g L_g over the groups present,
    with L_g the group's mean cross-entropy. q starts uniform and is part of the training state
    (:meth:`state_dict`), so a resumed run continues from the saved weights. Under DDP each process
    keeps its own q (from its own batches) and the training state holds rank 0's, which every
    process resumes from.

    Args:
        n_groups: number of groups (2 x classes).
        step_size: eta of the exponentiated-gradient update.
    """

    needs = ("class_text", "group")

    def __init__(self, n_groups: int, step_size: float = 0.01) -> None:
        self.step_size = float(step_size)
        self.group_weights = torch.full((n_groups,), 1.0 / n_groups, dtype=torch.float64)

    def __call__(self, batch: dict[str, Any], outputs: dict[str, Any]) -> torch.Tensor:
        logits = self.logits(outputs)
        labels = batch["label"].to(logits.device)
        groups = outputs["group"].to(logits.device)
        known = groups >= 0
        per_image = F.cross_entropy(logits[known], labels[known], reduction="none")
        present, index = torch.unique(groups[known], return_inverse=True)
        group_loss = per_image.new_zeros(len(present)).index_add(0, index, per_image)
        group_loss = group_loss / torch.bincount(index, minlength=len(present)).to(per_image.dtype)
        with torch.no_grad():
            update = self.group_weights.clone()
            update[present.cpu()] *= torch.exp(self.step_size * group_loss.detach().double().cpu())
            self.group_weights = update / update.sum()
        weights = self.group_weights[present.cpu()].to(group_loss.device, group_loss.dtype)
        return (weights * group_loss).sum() / weights.sum()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"group_weights": (n_groups,) float64}``, a copy of q (for the training state)."""
        return {"group_weights": self.group_weights.clone()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restores q from :meth:`state_dict`; refuses weights of another number of groups."""
        weights = torch.as_tensor(state["group_weights"], dtype=torch.float64)
        if weights.shape != self.group_weights.shape:
            raise ValueError(f"group_weights of shape {tuple(weights.shape)}, expected {tuple(self.group_weights.shape)}")
        self.group_weights = weights.clone()


class SpuriousAwareObjective:
    """Contrastive loss plus a term that pulls each image to its class text and away from spurious-attribute texts.

    L = L_contrastive + weight * mean_i -log( exp(s(x_i,y_i)/tau) / (exp(s(x_i,y_i)/tau) + sum_a exp(s(x_i,a)/tau)) )
    with a over the embeddings of the prompts naming the spurious attribute (images with unknown
    labels are left out of the second term). Project reading of Yang et al. 2023.

    Args:
        weight: weight of the second term.
        temperature: tau.
        label_aware: the contrastive term is label-aware (as the fine-tuning config says).
    """

    needs = ("class_text", "spurious_text")

    def __init__(self, weight: float = 1.0, temperature: float = 0.07, label_aware: bool = False) -> None:
        rank, world, _ = process_rank()
        self.contrastive = ContrastiveObjective(label_aware, rank, world)
        self.weight, self.temperature = float(weight), float(temperature)

    def __call__(self, batch: dict[str, Any], outputs: dict[str, Any]) -> torch.Tensor:
        base = self.contrastive(batch, outputs)
        image = outputs["image_features"].float()
        labels = batch["label"].to(image.device)
        known = labels >= 0
        if not bool(known.any()):
            return base
        own = (image[known] * outputs["class_text_features"].float()[labels[known]]).sum(dim=1, keepdim=True)
        away = image[known] @ outputs["spurious_text_features"].float().T
        logits = torch.cat([own, away], dim=1) / self.temperature
        push = (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()
        return base + self.weight * push


# ----------------------------------------------------------------------------- the trainer


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


class MitigationTrainer(Trainer):
    """:class:`Trainer` whose forward adds what the mitigation objective reads (module docstring).

    Args:
        config: the fine-tuning config (``classes``, ``templates``, training settings).
        objective: one of this module's objectives (its ``needs`` says which outputs to add) or
            any trainer objective.
        region_labels: image key -> (R_i,) bool spurious flags (stage-1 labelling).
        spurious_prompts: texts naming the spurious attribute (``spurious_aware``).
        shared_trunk: take the image embedding from the region pass when the tower allows it.
        train_wrapper: training dataset -> the dataset trained on (e.g.
            :class:`~ravl_med.mitigate.counterfactual.CounterfactualDataset`); ``None``: as ingested.
        **kwargs: :class:`Trainer` arguments (``sampler_factory``, ``progress``, ``on_step``).
    """

    def __init__(self, config, *, objective, region_labels: Mapping[str, np.ndarray] | None = None,
                 spurious_prompts: Sequence[str] = (), shared_trunk: bool = True,
                 train_wrapper: Callable[[Dataset], Dataset] | None = None, **kwargs) -> None:
        super().__init__(config, objective=objective, **kwargs)
        self.train_wrapper = train_wrapper
        self.images_fixed = train_wrapper is None  # counterfactual swaps paste anew every epoch
        self.needs = set(getattr(objective, "needs", ()))
        self.region_labels = dict(region_labels or {})
        self.spurious_prompts = list(spurious_prompts)
        self.shared_trunk = shared_trunk
        self._tokens: dict[str, torch.Tensor] = {}
        self._embedder: RegionEmbedder | None = None

    def datasets(self):
        """The trainer's datasets, the training one wrapped by ``train_wrapper`` (counterfactual swaps)."""
        train, val = super().datasets()
        return (train if self.train_wrapper is None else self.train_wrapper(train)), val

    def _tokenised(self, name: str, prompts: list[str], device: torch.device) -> torch.Tensor:
        if name not in self._tokens:
            self._tokens[name] = self.tokenizer_(prompts)
        return self._tokens[name].to(device)

    def _class_text(self, model: nn.Module, device: torch.device) -> torch.Tensor:
        templates = list(self.config.templates) if self.config.templates else list(CXR_TEMPLATES)
        tokens = self._tokenised("classes", class_prompts(self.config.classes, templates), device)
        return embed_class_prompts(model, tokens, len(self.config.classes))

    def forward(self, model: nn.Module, batch: dict[str, Any], ctx: DistributedContext) -> dict[str, Any]:
        inner = _unwrap(model)
        if "regions" not in self.needs:
            outputs = dict(super().forward(model, batch, ctx))
        else:
            outputs = self._forward_with_regions(model, inner, batch, ctx)
        if "class_text" in self.needs:
            outputs["class_text_features"] = self._class_text(inner, ctx.device)
        if "spurious_text" in self.needs:
            tokens = self._tokenised("spurious", self.spurious_prompts, ctx.device)
            outputs["spurious_text_features"] = F.normalize(inner.encode_text(tokens).float(), dim=-1)
        if "group" in self.needs:
            outputs["group"] = torch.as_tensor(
                stage1_groups(batch["label"].numpy(), batch["key"], self.region_labels), device=ctx.device
            )
        return outputs

    def _forward_with_regions(self, model, inner, batch, ctx) -> dict[str, Any]:
        if self._embedder is None:
            self._embedder = RegionEmbedder(inner, mode="one_pass")
        raw = batch["image"]
        height, width = raw.shape[-2:]
        side = self.preprocess_.image_size
        boxes = [self.preprocess_.scale_boxes(b.to(ctx.device), height, width) for b in batch["regions"]]
        spurious = []
        for index, (key, b) in enumerate(zip(batch["key"], boxes)):
            # Counterfactual items carry their labels after the swap; others are looked up.
            flags = batch["spurious"][index] if "spurious" in batch else self.region_labels.get(str(key))
            if flags is None or len(flags) != b.shape[0]:
                raise ValueError(f"image {key}: no stage-1 region labels for its {b.shape[0]} regions; "
                                 "label the training regions with the same ingestion settings")
            spurious.append(torch.as_tensor(np.asarray(flags, dtype=bool), device=ctx.device))
        tower = self._embedder.tower
        one_pass_image = (self.shared_trunk and not ctx.distributed
                          and isinstance(tower, (ModifiedResNet, CNNImageTower)))
        if one_pass_image:
            # A whole-image box reproduces encode_image for CNN towers: one trunk pass for image and regions.
            whole = torch.tensor([[0.0, 0.0, float(side), float(side)]], device=ctx.device)
            with_whole = [torch.cat([whole, b]) for b in boxes]
            if self._feature_cache is not None:  # the frozen prefix's maps, computed once per image
                prefix = self._feature_cache(batch["key"], lambda rows: self._model_input(raw[rows], ctx), ctx.device)
                trunk = tower.trunk_from_frozen(self._layout(prefix))
                out = self._embedder.from_cnn_trunk(trunk, with_whole, side)
            else:
                out = self._embedder(self._model_input(raw, ctx), with_whole)
            image_features = torch.stack([o[0] for o in out])
            regions = [o[1:] for o in out]
            if self._text_cache is not None:  # a frozen text tower: each report encoded once
                text = self._text_cache(batch["text"], ctx.device)
            else:
                text = F.normalize(inner.encode_text(batch["tokens"].to(ctx.device, non_blocking=True)), dim=-1)
            outputs = {"image_features": image_features, "text_features": text, "logit_scale": inner.logit_scale.exp()}
        else:
            # DDP: the image-report pass goes through the wrapper (gradient hooks); regions take a second pass.
            outputs = dict(super().forward(model, batch, ctx))
            regions = self._embedder(self._model_input(raw, ctx), boxes)
        outputs["region_features"] = regions
        outputs["region_is_spurious"] = spurious
        return outputs


def build_method(method: str, *, finetune_config, region_labels: Mapping[str, np.ndarray], lambda_: float = 0.8,
                 temperature: float = 0.07, gdro_step_size: float = 0.01, spurious_prompts: Sequence[str] = (),
                 spurious_weight: float = 1.0) -> dict[str, Any]:
    """The trainer arguments of a method.

    Returns:
        ``{"objective": ..., "sampler_factory": ... or None, "counterfactual": "audit" | "audit_paste" | "oracle" | None}``
        (the training images' swaps, :mod:`ravl_med.mitigate.counterfactual`).
    """
    label_aware = bool(finetune_config.label_aware)
    rank, world, _ = process_rank()
    sampler = None
    if method in ("ravl", "counterfactual_ravl"):
        objective: Any = RaVLObjective(lambda_, temperature, label_aware)
    elif method in ("standard", "counterfactual", "counterfactual_paste", "oracle_counterfactual"):
        objective = ContrastiveObjective(label_aware, rank, world)
    elif method in ("upsampled", "counterfactual_upsampled", "counterfactual_paste_upsampled"):
        objective = ContrastiveObjective(label_aware, rank, world)
        sampler = _group_sampler_factory(region_labels)
    elif method == "vl_erm":
        objective = VLERMObjective()
    elif method == "vl_gdro":
        objective = GroupDROObjective(2 * len(finetune_config.classes), gdro_step_size)
    elif method == "spurious_aware":
        if not spurious_prompts:
            raise ConfigError("spurious_aware needs spurious_prompts (texts naming the spurious attribute)")
        objective = SpuriousAwareObjective(spurious_weight, temperature, label_aware)
    else:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(MITIGATION_METHODS)}")
    return {"objective": objective, "sampler_factory": sampler, "counterfactual": MITIGATION_METHODS[method].counterfactual}
