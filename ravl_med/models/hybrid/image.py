"""Hybrid image towers: pretrained CNNs split where one-pass region embeddings cut them.

* :class:`TimmImageTower` (``"timm"``): any timm CNN built with ``pretrained=False``; for timm
  ``EfficientNet`` models the trunk ends at the last block (before ``conv_head``), the head is
  ``conv_head`` + ``bn2`` (its activation included); for other timm CNNs the trunk is
  ``forward_features`` and the head is empty.
* :class:`XrvDenseNetImageTower` (``"xrv_densenet"``): torchxrayvision's ``DenseNet(weights=None)``
  (DenseNet-121, 1-channel input in [-1024, 1024]); the trunk ends at the last dense block, the head
  is the final ``norm5`` + ReLU.

Both end with global average pooling and a :class:`~ravl_med.models.hybrid.projection.ProjectionHead`.
Backbone weights come from local files only, optionally renamed by a :data:`KEY_MAPS` entry.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ravl_med.models.hybrid.projection import ProjectionHead
from ravl_med.models.weights import (
    ChecksumError,
    WeightsError,
    load_state_dict,
    resolve_checkpoint,
    resolve_local_path,
)
from ravl_med.xrv import torchxrayvision

__all__ = [
    "KEY_MAPS",
    "VISION_TOWERS",
    "CNNImageTower",
    "TimmImageTower",
    "XrvDenseNetImageTower",
    "remap_lukemelas_efficientnet",
]

VISION_TOWERS = ("timm", "xrv_densenet")


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

    # -- locking (open_clip's ``lock_image_tower``) ---------------------------------------------

    def parameter_groups(self) -> list[list[str]]:
        """The backbone's parameter names in layer groups, input side first (what ``lock`` counts)."""
        return [[name for name, _ in self.backbone.named_parameters()]]

    def lock(self, unlocked_groups: int = 0) -> int:
        """Freezes the backbone but its last ``unlocked_groups`` groups (:meth:`parameter_groups`).

        The projection head always stays trainable. BatchNorm layers whose parameters are all frozen
        are kept in eval mode from now on (:meth:`train` leaves them there): they normalise with
        their pretrained running statistics, which no longer change. A frozen input-side prefix of
        the trunk therefore computes a fixed function of the image, run under ``torch.no_grad``
        (:meth:`frozen_features`) and cacheable per image.

        Args:
            unlocked_groups: trailing groups left trainable, 0 (whole backbone frozen) to the
                number of groups (nothing frozen).

        Returns:
            the number of frozen groups.

        Raises:
            ValueError: ``unlocked_groups`` outside [0, number of groups].
        """
        groups = self.parameter_groups()
        if not 0 <= unlocked_groups <= len(groups):
            raise ValueError(f"unlocked_groups must be in [0, {len(groups)}] for this tower, got {unlocked_groups}")
        frozen = len(groups) - unlocked_groups
        parameters = dict(self.backbone.named_parameters())
        for group in groups[:frozen]:
            for name in group:
                parameters[name].requires_grad_(False)
        self._frozen_norms = [
            module for module in self.backbone.modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and not any(p.requires_grad for p in module.parameters(recurse=False))
        ]  # fmt: skip
        self.train(self.training)
        return frozen

    def train(self, mode: bool = True) -> "CNNImageTower":
        super().train(mode)
        for module in getattr(self, "_frozen_norms", ()):
            module.eval()  # frozen statistics: running mean/var, never batch statistics
        return self

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) images -> the output of the trunk's frozen input-side prefix (no gradient).

        Without a frozen prefix, the images themselves. ``trunk(x) == trunk_from_frozen(frozen_features(x))``.
        """
        return x

    def trunk_from_frozen(self, features: torch.Tensor) -> torch.Tensor:
        """The rest of the trunk after :meth:`frozen_features` -> (B, C', h, w)."""
        return self.trunk(features)

    def forward_from_frozen(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`frozen_features` output (e.g. cached per image) -> (B, D), as :meth:`forward`."""
        return self.embed_feature_map(self.trunk_from_frozen(features))


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

    def parameter_groups(self) -> list[list[str]]:
        """timm's coarse layer groups of the model (``group_matcher(coarse=True)``), as open_clip's
        ``TimmModel.lock`` counts them. EfficientNet-Lite0: the stem, then one group per block stage,
        the last stage together with ``conv_head``/``bn2`` (8 groups)."""
        from timm.models import group_parameters

        grouped = group_parameters(self.model, self.model.group_matcher(coarse=True))
        return [list(grouped[index]) for index in sorted(grouped)]

    def _frozen_prefix(self) -> tuple[bool, int]:
        """(stem frozen, number of leading block stages frozen) of an EfficientNet split."""
        m = self.model
        if not self._split_at_conv_head or any(p.requires_grad for p in (*m.conv_stem.parameters(), *m.bn1.parameters())):
            return False, 0
        count = 0
        for stage in m.blocks:
            if any(p.requires_grad for p in stage.parameters()):
                break
            count += 1
        return True, count

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        stem_frozen, stages = self._frozen_prefix()
        if not stem_frozen:
            return x
        m = self.model
        with torch.no_grad():
            return m.blocks[:stages](m.bn1(m.conv_stem(x)))

    def trunk_from_frozen(self, features: torch.Tensor) -> torch.Tensor:
        if not self._split_at_conv_head:
            return self.model.forward_features(features)
        stem_frozen, stages = self._frozen_prefix()
        m = self.model
        if not stem_frozen:
            features = m.bn1(m.conv_stem(features))
        return m.blocks[stages:](features)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        # EfficientNet-Lite0: (B, 320, H/32, W/32), the last block's output; a frozen prefix runs without gradient.
        if self._split_at_conv_head:
            return self.trunk_from_frozen(self.frozen_features(x))
        return self.model.forward_features(x)

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
