"""MedCLIP-style hybrid backbones: a pretrained CNN image tower and a pretrained text tower, each with
a projection head into a shared space, aligned contrastively (open_clip's ``CLIP`` interface).

MedCLIP (Wang et al. 2022) builds its model this way: an ImageNet-pretrained image encoder and a
clinical BERT text encoder, each followed by a projection head, then contrastive fine-tuning on chest
X-ray image-report pairs. :class:`HybridCLIP` gives such a model the interface the rest of this
package uses (``visual``, ``encode_image``, ``encode_text``, ``forward`` -> ``(image_features,
text_features, logit_scale.exp())``, ``logit_scale``), so :class:`open_clip.loss.ClipLoss`,
:mod:`~ravl_med.models.zeroshot` and :class:`~ravl_med.models.regions.RegionEmbedder` work unchanged.

Towers (``vision_cfg["tower"]`` / ``text_cfg["tower"]`` in a registry config):

* ``"timm"``: any timm CNN built with ``pretrained=False``; for timm ``EfficientNet`` models the
  trunk ends at the last block (before ``conv_head``), the head is ``conv_head`` + ``bn2`` (its
  activation included); for other timm CNNs the trunk is ``forward_features`` and the head is empty.
  Then global average pooling and the projection head.
* ``"xrv_densenet"``: torchxrayvision's ``DenseNet(weights=None)`` (DenseNet-121, 1-channel input in
  [-1024, 1024]); the trunk ends at the last dense block, the head is the final ``norm5`` + ReLU.
* ``"hf"`` (text): a Hugging Face ``AutoModel`` read from a local folder (``local_files_only``),
  mean (or CLS) pooling over the attention mask, then the projection head.

Weights come only from local files or folders (:mod:`ravl_med.models.weights`): a path, or
``package:<module>/<relative path>`` for a file shipped inside an installed Python package (found with
:func:`importlib.util.find_spec`, never downloaded). A missing path raises ``FileNotFoundError``
naming it; a ``*_sha256`` value is checked before the file is read.

A generic config a hospital can point at its own towers (register it with
:func:`~ravl_med.models.registry.add_backbone_config`)::

    {
      "kind": "hybrid",
      "embed_dim": 512,
      "vision_cfg": {"tower": "timm", "timm_model_name": "densenet121", "image_size": 224,
                     "checkpoint": "/models/densenet121.safetensors", "checkpoint_sha256": "...",
                     "projection": "mlp"},
      "text_cfg": {"tower": "hf", "hf_model_path": "/models/Bio_ClinicalBERT",
                   "context_length": 128, "pooling": "mean", "projection": "mlp"},
      "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]
    }
"""

from __future__ import annotations

import importlib.util
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ravl_med.models.weights import (
    ChecksumError,
    WeightsError,
    file_sha256,
    load_state_dict,
    resolve_checkpoint,
)
from ravl_med.xrv import torchxrayvision

__all__ = [
    "KEY_MAPS",
    "PACKAGE_SCHEME",
    "CNNImageTower",
    "HFTextTower",
    "HFTokenizer",
    "HybridCLIP",
    "ProjectionHead",
    "TimmImageTower",
    "XrvDenseNetImageTower",
    "build_hybrid",
    "remap_lukemelas_efficientnet",
    "resolve_local_path",
    "validate_hybrid_config",
]

PACKAGE_SCHEME = "package:"
VISION_TOWERS = ("timm", "xrv_densenet")
TEXT_TOWERS = ("hf",)
PROJECTIONS = ("linear", "mlp")
POOLINGS = ("mean", "cls")
_VISION_KEYS = {
    "tower", "timm_model_name", "in_chans", "image_size", "checkpoint", "checkpoint_sha256", "key_map",
    "projection",
}  # fmt: skip
_TEXT_KEYS = {"tower", "hf_model_path", "checkpoint_sha256", "context_length", "pooling", "projection"}


# --------------------------------------------------------------------------------------------- paths


def resolve_local_path(value: str | Path, what: str = "path") -> Path:
    """A local file or folder from a config value.

    Args:
        value: a filesystem path (``~`` expanded), or ``package:<module>/<relative path>`` for a file
            or folder inside an installed Python package (located without importing it).
        what: what the path is for, used in error messages.

    Raises:
        FileNotFoundError: naming the missing path, or the package that is not installed.
    """
    text = str(value)
    if text.startswith(PACKAGE_SCHEME):
        module, _, relative = text[len(PACKAGE_SCHEME) :].partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            pip_name = module.replace("_", "-")
            raise FileNotFoundError(
                f"{what}: Python package {module!r} is not installed (pip install {pip_name}); needed for {text}"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / relative
    else:
        path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (weights are only loaded from local files)")
    return path


# ------------------------------------------------------------------------------------------ key maps


def remap_lukemelas_efficientnet(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Renames an EfficientNet(-Lite) state dict in the ``efficientnet_pytorch`` layout to timm's.

    The source numbers blocks flatly (``_blocks.0`` ... ``_blocks.15``); timm nests them by stage
    (``blocks.<stage>.<index>``), so the stage lengths are read from ``model.blocks``. Inside a block:

    ========================  ==========================  ==============================
    source                    timm, depthwise-separable   timm, inverted residual
    ========================  ==========================  ==============================
    ``_expand_conv``          (absent)                    ``conv_pw``
    ``_bn0``                  (absent)                    ``bn1``
    ``_depthwise_conv``       ``conv_dw``                 ``conv_dw``
    ``_bn1``                  ``bn1``                     ``bn2``
    ``_project_conv``         ``conv_pw``                 ``conv_pwl``
    ``_bn2``                  ``bn2``                     ``bn3``
    ``_se_reduce/_se_expand`` ``se.conv_reduce/expand``   ``se.conv_reduce/expand``
    ========================  ==========================  ==============================

    Top level: ``_conv_stem`` -> ``conv_stem``, ``_bn0`` -> ``bn1``, ``_conv_head`` -> ``conv_head``,
    ``_bn1`` -> ``bn2``, ``_fc`` -> ``classifier``.

    Args:
        state: source state dict.
        model: the timm ``EfficientNet`` the result is for.

    Returns:
        the renamed state dict (same tensors).

    Raises:
        WeightsError: a key that fits neither layout, or more source blocks than the model has.
    """
    positions = [(stage, index) for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    separable = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {
        "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
        "_project_conv": "conv_pwl", "_bn2": "bn3",
    }  # fmt: skip
    squeeze = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            flat = int(block[1])
            if flat >= len(positions):
                raise WeightsError(f"{key}: block {flat} but the timm model has {len(positions)} blocks")
            stage, index = positions[flat]
            # A block with an expansion conv is an inverted residual; the first stage's are not.
            is_inverted = hasattr(model.blocks[stage][index], "conv_pwl")
            table = {**(inverted if is_inverted else separable), **squeeze}
            if block[2] not in table:
                raise WeightsError(f"{key}: no timm name for {block[2]!r}")
            out[f"blocks.{stage}.{index}.{table[block[2]]}.{block[3]}"] = value
            continue
        head, _, rest = key.partition(".")
        if head not in top:
            raise WeightsError(f"{key}: no timm name for {head!r}")
        out[f"{top[head]}.{rest}"] = value
    return out


#: Named state-dict key maps a config may ask for (``vision_cfg["key_map"]``).
KEY_MAPS: dict[str, Callable[[Mapping[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]] = {
    "lukemelas_efficientnet": remap_lukemelas_efficientnet,
}


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    own = module.state_dict()
    shape_errors = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and own[key].shape != value.shape
    ]
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if shape_errors or missing or unexpected:
        raise WeightsError(
            f"{source}: shape mismatch for {len(shape_errors)} tensors {shape_errors[:4]}; "
            f"missing keys {len(missing)} {missing[:8]}; unexpected keys {len(unexpected)} {unexpected[:8]}"
        )
    module.load_state_dict(state, strict=True)


# ------------------------------------------------------------------------------------------- towers


def _quietly(load: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Calls a transformers loader without its per-call progress bar (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class ProjectionHead(nn.Module):
    """Maps pooled tower features (N, C) to the joint space (N, D).

    Args:
        in_dim: C.
        out_dim: D.
        kind: ``"linear"`` (one bias-free linear map, as CLIP) or ``"mlp"`` (linear, GELU, linear:
            the MedCLIP-style head).
    """

    def __init__(self, in_dim: int, out_dim: int, kind: str = "linear") -> None:
        super().__init__()
        if kind not in PROJECTIONS:
            raise ValueError(f"projection must be one of {PROJECTIONS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim, bias=False))
        else:
            self.layers = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N, D)."""
        return self.layers(x)


class CNNImageTower(nn.Module):
    """A CNN image tower split where one-pass region embeddings cut it.

    ``forward(x) = project(pool(head(trunk(x))))``; :class:`~ravl_med.models.regions.RegionEmbedder`
    RoIAligns boxes on ``trunk(x)`` and sends the pooled maps through :meth:`embed_feature_map`.
    Subclasses set ``trunk``/``head`` behaviour, ``feature_dim`` (channels after ``head``),
    ``in_channels`` and ``image_size``.

    Args:
        embed_dim: joint dimension D (``output_dim``).
        feature_dim: channels C of the head's output.
        projection: see :class:`ProjectionHead`.
    """

    in_channels: int = 3
    image_size: int = 224

    def __init__(self, embed_dim: int, feature_dim: int, projection: str = "linear") -> None:
        super().__init__()
        self.output_dim = int(embed_dim)
        self.feature_dim = int(feature_dim)
        self.proj = ProjectionHead(self.feature_dim, self.output_dim, projection)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) images -> (B, C', h, w) the feature map regions are cut from."""
        raise NotImplementedError

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C', h, w) -> (N, C, h, w): the layers between the cut and the pooling."""
        raise NotImplementedError

    @property
    def backbone(self) -> nn.Module:
        """The pretrained part (everything except the projection head)."""
        raise NotImplementedError

    def embed_feature_map(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C', h, w) trunk features (whole images or RoIAligned boxes) -> (N, D) embeddings."""
        return self.proj(self.head(features).mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) preprocessed images -> (B, D) unnormalised embeddings."""
        return self.embed_feature_map(self.trunk(x))


class TimmImageTower(CNNImageTower):
    """A timm CNN (``pretrained=False``) with optional local weights, pooling and projection.

    Args:
        model_name: timm architecture, e.g. ``"tf_efficientnet_lite0"``.
        embed_dim: joint dimension D.
        image_size: input side N, pixels (for preprocessing; CNNs accept other sizes).
        in_chans: input channels.
        checkpoint: local file/folder (or ``package:`` path) with the timm model's weights; the
            classifier's keys, if present, are dropped; everything else must match (strict).
        checkpoint_sha256: expected hex digest of the checkpoint file.
        key_map: a :data:`KEY_MAPS` name applied to the checkpoint's keys first.
        projection: see :class:`ProjectionHead`.
    """

    def __init__(
        self,
        model_name: str,
        embed_dim: int,
        image_size: int = 224,
        in_chans: int = 3,
        checkpoint: str | Path | None = None,
        checkpoint_sha256: str | None = None,
        key_map: str | None = None,
        projection: str = "linear",
    ) -> None:
        import timm
        from timm.models.efficientnet import EfficientNet

        model = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans)
        super().__init__(embed_dim, model.num_features, projection)
        self.model_name, self.image_size, self.in_channels = model_name, int(image_size), int(in_chans)
        self.model = model
        self._split_at_conv_head = isinstance(model, EfficientNet)
        if checkpoint is not None:
            self.load_backbone(checkpoint, checkpoint_sha256, key_map)

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def load_backbone(self, checkpoint: str | Path, sha256: str | None = None, key_map: str | None = None) -> Path:
        """Fills the timm model from a local checkpoint (strict, classifier keys dropped); returns the file."""
        file = resolve_checkpoint(resolve_local_path(checkpoint, "image tower checkpoint"))
        state = load_state_dict(file, sha256=sha256)
        if key_map is not None:
            if key_map not in KEY_MAPS:
                raise ValueError(f"unknown key_map {key_map!r}; known: {sorted(KEY_MAPS)}")
            state = KEY_MAPS[key_map](state, self.model)
        classifier = self.model.pretrained_cfg.get("classifier", "classifier")
        state = {k: v for k, v in state.items() if not (k == classifier or k.startswith(f"{classifier}."))}
        _load_strict(self.model, state, file)
        return file

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if self._split_at_conv_head:
            return m.blocks(m.bn1(m.conv_stem(x)))  # (B, 320, H/32, W/32) for EfficientNet-Lite0
        return m.forward_features(x)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        if self._split_at_conv_head:
            return self.model.bn2(self.model.conv_head(features))  # bn2 carries the activation in timm
        return features


class XrvDenseNetImageTower(CNNImageTower):
    """torchxrayvision's DenseNet-121 (1 channel, [-1024, 1024] input), pooling and projection.

    Built with ``weights=None``, which makes torchxrayvision download nothing; weights come only from
    a local state-dict file. Official torchxrayvision weight files are pickled whole models, which this
    package does not unpickle; convert one once, from a trusted source, with
    ``torch.save(torch.load(f, weights_only=False).state_dict(), "xrv-densenet121.pt")``.

    Args:
        embed_dim: joint dimension D.
        image_size: input side N (torchxrayvision's DenseNets are trained at 224).
        checkpoint: local state-dict file/folder for ``xrv.models.DenseNet`` (``features.*``,
            ``classifier.*``); ``None`` keeps the random initialisation (with a warning).
        checkpoint_sha256: expected hex digest of the file.
        projection: see :class:`ProjectionHead`.
    """

    in_channels = 1

    def __init__(
        self,
        embed_dim: int,
        image_size: int = 224,
        checkpoint: str | Path | None = None,
        checkpoint_sha256: str | None = None,
        projection: str = "linear",
    ) -> None:
        model = torchxrayvision().models.DenseNet(weights=None)  # weights=None: no download, no file read
        super().__init__(embed_dim, model.features.norm5.num_features, projection)
        self.image_size = int(image_size)
        self.model = model
        if checkpoint is not None:
            self.load_backbone(checkpoint, checkpoint_sha256)
        else:
            warnings.warn(
                "xrv_densenet image tower: no local checkpoint given, the DenseNet keeps its random initialisation",
                stacklevel=2,
            )

    @property
    def backbone(self) -> nn.Module:
        return self.model

    def load_backbone(self, checkpoint: str | Path, sha256: str | None = None) -> Path:
        """Fills the DenseNet from a local state-dict file (strict); returns the file."""
        file = resolve_checkpoint(resolve_local_path(checkpoint, "image tower checkpoint"))
        try:
            state = load_state_dict(file, sha256=sha256)
        except ChecksumError:
            raise
        except WeightsError as error:
            raise WeightsError(
                f"{error}. Official torchxrayvision files are pickled models: convert one (trusted source only) "
                "with torch.save(torch.load(f, weights_only=False).state_dict(), 'xrv-densenet121.pt')"
            ) from error
        state = {k: v for k, v in state.items() if k != "op_threshs"}  # classifier calibration, unused here
        _load_strict(self.model, state, file)
        return file

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.features
        for name, layer in features.named_children():
            if name == "norm5":
                break
            x = layer(x)
        return x  # (B, 1024, H/32, W/32): the last dense block's output

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return F.relu(self.model.features.norm5(features))


class HFTokenizer:
    """Strings -> fixed-length input ids, with open_clip's tokenizer calling convention.

    Args:
        folder: local Hugging Face model folder holding the tokenizer files.
        context_length: L, the padded/truncated length.

    Attributes:
        pad_token_id: the id the text tower reads as padding (its attention mask is ``ids != pad``).
    """

    def __init__(self, folder: str | Path, context_length: int = 128) -> None:
        from transformers import AutoTokenizer

        self.folder = resolve_local_path(folder, "text tower folder")
        self.context_length = int(context_length)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer in {self.folder} has no pad token; the text tower needs one")
        self.pad_token_id = int(self.tokenizer.pad_token_id)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Args:
            texts: a string or N strings.
            context_length: override of L.

        Returns:
            (N, L) int64 input ids, padded with ``pad_token_id``, truncated to L.
        """
        if isinstance(texts, str):
            texts = [texts]
        length = int(context_length or self.context_length)
        encoded = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt"
        )
        return encoded["input_ids"].long()


class HFTextTower(nn.Module):
    """A local Hugging Face encoder, masked pooling and a projection head.

    Args:
        folder: local model folder (``config.json`` + weights); never a hub name.
        embed_dim: joint dimension D.
        pad_token_id: the padding id; the attention mask is ``input_ids != pad_token_id``.
        pooling: ``"mean"`` over unpadded tokens (sentence-transformers style) or ``"cls"``.
        projection: see :class:`ProjectionHead`.
        checkpoint_sha256: expected hex digest of the folder's weight file.
    """

    def __init__(
        self,
        folder: str | Path,
        embed_dim: int,
        pad_token_id: int,
        pooling: str = "mean",
        projection: str = "linear",
        checkpoint_sha256: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel

        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.folder = resolve_local_path(folder, "text tower folder")
        if checkpoint_sha256 is not None:
            weights_file = resolve_checkpoint(self.folder)
            actual = file_sha256(weights_file)
            if actual != checkpoint_sha256.strip().lower():
                raise ChecksumError(
                    f"sha256 mismatch for {weights_file}: expected {checkpoint_sha256.strip().lower()}, got {actual}"
                )
        self.model = _quietly(AutoModel.from_pretrained, str(self.folder), local_files_only=True, dtype=torch.float32)
        self.pad_token_id, self.pooling = int(pad_token_id), pooling
        self.output_dim = int(embed_dim)
        self.proj = ProjectionHead(int(self.model.config.hidden_size), self.output_dim, projection)

    def pooled(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) input ids -> (N, hidden) pooled encoder output (before the projection)."""
        mask = (input_ids != self.pad_token_id).long()
        hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (N, L, hidden)
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(N, L) input ids -> (N, D) unnormalised embeddings."""
        return self.proj(self.pooled(input_ids))


# ------------------------------------------------------------------------------------------- model


class HybridCLIP(nn.Module):
    """Image tower + text tower + learnable temperature, with open_clip ``CLIP``'s interface.

    Args:
        visual: the image tower, (B, K, H, W) -> (B, D).
        text: the text tower, (N, L) ids -> (N, D).
        init_logit_scale: initial log inverse temperature, default log(1 / 0.07).

    Attributes:
        visual, text: the towers; ``logit_scale``: scalar parameter; ``output_dict``: return a dict
            from :meth:`forward` instead of a tuple (as open_clip).
    """

    def __init__(
        self, visual: CNNImageTower, text: HFTextTower, init_logit_scale: float = math.log(1 / 0.07)
    ) -> None:
        super().__init__()
        if visual.output_dim != text.output_dim:
            raise ValueError(f"tower dimensions differ: image {visual.output_dim} vs text {text.output_dim}")
        self.visual, self.text = visual, text
        self.embed_dim = visual.output_dim
        self.logit_scale = nn.Parameter(torch.ones([]) * init_logit_scale)
        self.output_dict = False

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(B, K, H, W) preprocessed images -> (B, D) embeddings (unit rows if ``normalize``)."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(N, L) token ids from the backbone's tokenizer -> (N, D) embeddings."""
        features = self.text(text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """Returns ``(image_features (B, D), text_features (N, D), logit_scale.exp())``, unit rows.

        As open_clip, a missing input gives ``None`` in its place, and ``output_dict`` switches to a
        dict with the keys ``image_features``, ``text_features``, ``logit_scale``.
        """
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        if self.output_dict:
            return {
                "image_features": image_features,
                "text_features": text_features,
                "logit_scale": self.logit_scale.exp(),
            }
        return image_features, text_features, self.logit_scale.exp()

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freezes the pretrained image backbone (the projection head stays trainable).

        Only ``unlocked_groups=0`` is supported. ``freeze_bn_stats`` also keeps its BatchNorm layers
        in eval mode by freezing their statistics (momentum 0).
        """
        if unlocked_groups:
            raise NotImplementedError("HybridCLIP locks the whole image backbone (unlocked_groups=0)")
        for parameter in self.visual.backbone.parameters():
            parameter.requires_grad = False
        if freeze_bn_stats:
            for module in self.visual.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = 0.0

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freezes the pretrained text encoder (the projection head stays trainable)."""
        if unlocked_layers:
            raise NotImplementedError("HybridCLIP locks the whole text encoder (unlocked_layers=0)")
        for parameter in self.text.model.parameters():
            parameter.requires_grad = False


# ------------------------------------------------------------------------------------------- build


def validate_hybrid_config(name: str, vision_cfg: Mapping[str, Any], text_cfg: Mapping[str, Any]) -> None:
    """Checks a hybrid config's structure (not its paths, which are checked when it is built).

    Raises:
        ValueError: unknown tower kind, unknown keys, a missing required key, or a bad option.
    """
    for label, cfg, allowed, towers in (
        ("vision_cfg", vision_cfg, _VISION_KEYS, VISION_TOWERS),
        ("text_cfg", text_cfg, _TEXT_KEYS, TEXT_TOWERS),
    ):
        unknown = set(cfg) - allowed
        if unknown:
            raise ValueError(f"backbone config {name!r}: {label} has unknown keys {sorted(unknown)}; allowed {sorted(allowed)}")
        if cfg.get("tower") not in towers:
            raise ValueError(f"backbone config {name!r}: {label}['tower'] must be one of {towers}, got {cfg.get('tower')!r}")
        if cfg.get("projection", "linear") not in PROJECTIONS:
            raise ValueError(f"backbone config {name!r}: {label}['projection'] must be one of {PROJECTIONS}")
    if vision_cfg["tower"] == "timm" and not vision_cfg.get("timm_model_name"):
        raise ValueError(f"backbone config {name!r}: a timm image tower needs 'timm_model_name'")
    if vision_cfg.get("key_map") is not None and vision_cfg["key_map"] not in KEY_MAPS:
        raise ValueError(f"backbone config {name!r}: unknown key_map {vision_cfg['key_map']!r}; known {sorted(KEY_MAPS)}")
    if not text_cfg.get("hf_model_path"):
        raise ValueError(f"backbone config {name!r}: a hf text tower needs 'hf_model_path' (a local folder)")
    if text_cfg.get("pooling", "mean") not in POOLINGS:
        raise ValueError(f"backbone config {name!r}: text_cfg['pooling'] must be one of {POOLINGS}")


def build_hybrid(
    embed_dim: int,
    vision_cfg: Mapping[str, Any],
    text_cfg: Mapping[str, Any],
    image_checkpoint: str | Path | None = None,
    image_sha256: str | None = None,
    init_logit_scale: float = math.log(1 / 0.07),
) -> tuple[HybridCLIP, HFTokenizer]:
    """Builds a :class:`HybridCLIP` and its tokenizer from tower configs, offline.

    Args:
        embed_dim: joint dimension D.
        vision_cfg, text_cfg: tower configs (see the module docstring).
        image_checkpoint: overrides ``vision_cfg["checkpoint"]`` (the image backbone's initial weights).
        image_sha256: digest for ``image_checkpoint`` (overrides ``vision_cfg["checkpoint_sha256"]``).
        init_logit_scale: initial log inverse temperature.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        FileNotFoundError: a checkpoint path or text folder that does not exist (named).
        ChecksumError: a digest mismatch. WeightsError: weights that do not fit the tower.
    """
    checkpoint = image_checkpoint if image_checkpoint is not None else vision_cfg.get("checkpoint")
    sha256 = image_sha256 if image_checkpoint is not None else vision_cfg.get("checkpoint_sha256")
    projection = vision_cfg.get("projection", "linear")
    image_size = int(vision_cfg.get("image_size", 224))
    if vision_cfg["tower"] == "timm":
        visual: CNNImageTower = TimmImageTower(
            vision_cfg["timm_model_name"],
            embed_dim,
            image_size=image_size,
            in_chans=int(vision_cfg.get("in_chans", 3)),
            checkpoint=checkpoint,
            checkpoint_sha256=sha256,
            key_map=vision_cfg.get("key_map"),
            projection=projection,
        )
    elif vision_cfg["tower"] == "xrv_densenet":
        visual = XrvDenseNetImageTower(
            embed_dim, image_size=image_size, checkpoint=checkpoint, checkpoint_sha256=sha256, projection=projection
        )
    else:
        raise ValueError(f"unknown image tower {vision_cfg['tower']!r}; known {VISION_TOWERS}")
    tokenizer = HFTokenizer(text_cfg["hf_model_path"], int(text_cfg.get("context_length", 128)))
    text = HFTextTower(
        tokenizer.folder,
        embed_dim,
        pad_token_id=tokenizer.pad_token_id,
        pooling=text_cfg.get("pooling", "mean"),
        projection=text_cfg.get("projection", "linear"),
        checkpoint_sha256=text_cfg.get("checkpoint_sha256"),
    )
    return HybridCLIP(visual, text, init_logit_scale=init_logit_scale), tokenizer
