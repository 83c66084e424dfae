"""Backbone registry, open_clip style: architectures are JSON data, loaded at import.

Each ``configs/<name>.json`` holds either full open_clip tower configs::

    {"embed_dim": 64, "vision_cfg": {...}, "text_cfg": {...}, "image_mean": [...], "image_std": [...]}

or a reference to one of open_clip's own model configs, with optional overrides::

    {"open_clip_config": "RN50", "image_mean": [...], "image_std": [...]}

or a MedCLIP-style hybrid of pretrained towers (:mod:`ravl_med.models.hybrid`)::

    {"kind": "hybrid", "embed_dim": 512, "vision_cfg": {"tower": "timm", ...},
     "text_cfg": {"tower": "hf", "hf_model_path": "/local/folder", ...}, "image_mean": [...], ...}

Every config declares its input convention: ``image_mean``/``image_std`` (one value per channel),
``image_channels`` (3 by default, 1 for grey towers) or a named ``image_scaling`` preset such as
``"xrv"`` (see :mod:`ravl_med.models.preprocess`).

Any open_clip architecture is also reachable as ``open_clip:<name>`` (e.g. ``open_clip:RN50x4``).
Models are always built with random initialisation (no ``pretrained`` download); weights come only
from a local ``checkpoint`` (:mod:`ravl_med.models.weights`).

Models a user brings, in the layouts they are published in:

* ``local-dir:<folder>``: an open_clip model folder (open_clip's own scheme; the layout hub models
  such as BiomedCLIP use): ``open_clip_config.json`` holds ``model_cfg`` (the architecture, read as a
  config above) and ``preprocess_cfg`` (``mean``/``std``); the weights file beside it
  (``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``) is the ``checkpoint``. Its
  text tower must be open_clip's own transformer: a Hugging Face text tower (BiomedCLIP's
  PubMedBERT) is refused, as its config and tokenizer are named by hub id.
* ``openai-clip``: an OpenAI-CLIP-layout state dict (CheXzero's ``.pt`` files): the ``checkpoint``
  is required, and open_clip infers the architecture from its tensor shapes (QuickGELU, 64-wide
  attention heads, as OpenAI's models; OpenAI's mean/std; the CLIP BPE tokenizer).
* a MedCLIP-style hybrid state dict (``visual.*`` + ``text.*``, what ``ravl-med finetune`` writes):
  the ``checkpoint`` of a ``kind: hybrid`` config such as ``medclip-effnet-minilm``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, build_model_from_openai_state_dict
from open_clip.tokenizer import SimpleTokenizer

from ravl_med.models.hybrid import HybridCLIP, build_hybrid, validate_hybrid_config
from ravl_med.models.preprocess import RadiographPreprocess
from ravl_med.models.weights import (
    WeightsError,
    load_checkpoint,
    load_state_dict,
    resolve_checkpoint,
    resolve_local_path,
)

__all__ = [
    "CONFIG_DIR",
    "BackboneSpec",
    "add_backbone_config",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
]

CONFIG_DIR = Path(__file__).with_name("configs")
OPEN_CLIP_SCHEME = "open_clip:"
#: ``local-dir:<folder>``: the architecture and preprocessing of an open_clip model folder.
LOCAL_DIR_SCHEME = "local-dir:"
OPEN_CLIP_FOLDER_CONFIG = "open_clip_config.json"
#: The backbone whose architecture is inferred from an OpenAI-CLIP-layout checkpoint.
OPENAI_LAYOUT = "openai-clip"
#: Entries of OpenAI's CLIP state dicts that describe the model rather than weigh it (open_clip drops them).
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")
_KNOWN_KEYS = {
    "description", "open_clip_config", "embed_dim", "vision_cfg", "text_cfg", "quick_gelu",
    "image_mean", "image_std", "init_logit_scale", "kind", "image_channels", "image_scaling",
}  # fmt: skip
KINDS = ("open_clip", "hybrid")


@dataclass(frozen=True)
class BackboneSpec:
    """A resolved backbone configuration.

    Attributes:
        name: registry name.
        embed_dim: joint embedding dimension D.
        vision_cfg, text_cfg: open_clip tower configs (``CLIPVisionCfg``/``CLIPTextCfg`` fields), or
            hybrid tower configs (:mod:`ravl_med.models.hybrid`) when ``kind == "hybrid"``.
        image_mean, image_std: per-channel normalisation of the input (``image_channels`` values).
        quick_gelu: use QuickGELU (OpenAI-trained weights need it).
        tokenizer_name: open_clip model name for :func:`open_clip.get_tokenizer`, or ``None`` for
            the CLIP BPE tokenizer at the text tower's context length.
        description: one line for listings.
        kind: ``"open_clip"`` (an open_clip ``CLIP``) or ``"hybrid"`` (a :class:`HybridCLIP`).
        image_channels: the image tower's input channels, 1 or 3.
        image_scaling: a named preprocessing preset (overrides mean/std), or ``None``.
    """

    name: str
    embed_dim: int
    vision_cfg: dict[str, Any]
    text_cfg: dict[str, Any]
    image_mean: tuple[float, ...] = OPENAI_DATASET_MEAN
    image_std: tuple[float, ...] = OPENAI_DATASET_STD
    quick_gelu: bool = False
    tokenizer_name: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "open_clip"
    image_channels: int = 3
    image_scaling: str | None = None

    @property
    def image_size(self) -> int:
        size = self.vision_cfg.get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def preprocess(self) -> RadiographPreprocess:
        """The input preprocessing this config declares."""
        return RadiographPreprocess.from_config(
            self.image_size, self.image_mean, self.image_std, self.image_channels, self.image_scaling
        )


_REGISTRY: dict[str, dict[str, Any]] = {}


def _spec_from_dict(name: str, raw: Mapping[str, Any]) -> BackboneSpec:
    unknown = set(raw) - _KNOWN_KEYS
    if unknown:
        raise ValueError(f"backbone config {name!r}: unknown keys {sorted(unknown)}; allowed {sorted(_KNOWN_KEYS)}")
    kind = raw.get("kind", "open_clip")
    if kind not in KINDS:
        raise ValueError(f"backbone config {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if kind == "hybrid":
        return _hybrid_spec_from_dict(name, raw)
    base: dict[str, Any] = {}
    tokenizer_name = None
    if "open_clip_config" in raw:
        reference = raw["open_clip_config"]
        base = open_clip.get_model_config(reference)
        if base is None:
            raise ValueError(f"backbone config {name!r}: open_clip has no model config {reference!r}")
        tokenizer_name = reference
    merged = {**copy.deepcopy(base), **{k: copy.deepcopy(v) for k, v in raw.items() if k != "open_clip_config"}}
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in merged:
            raise ValueError(f"backbone config {name!r}: missing {key!r}")
    hf_text = merged["text_cfg"].get("hf_model_name") or merged["text_cfg"].get("hf_tokenizer_name")
    if hf_text:
        raise ValueError(
            f"backbone config {name!r}: its text tower is the Hugging Face model {hf_text!r} (text_cfg.hf_model_name/"
            "hf_tokenizer_name), whose config and tokenizer would come from the hub; open_clip configs are supported "
            "with open_clip's own text transformer only (a local Hugging Face text tower: a kind 'hybrid' config)"
        )
    if merged["vision_cfg"].get("timm_model_name") and merged["vision_cfg"].get("timm_model_pretrained"):
        raise ValueError(f"backbone config {name!r}: timm_model_pretrained would download weights")
    spec = BackboneSpec(
        name=name,
        embed_dim=int(merged["embed_dim"]),
        vision_cfg=merged["vision_cfg"],
        text_cfg=merged["text_cfg"],
        image_mean=tuple(merged.get("image_mean", OPENAI_DATASET_MEAN)),
        image_std=tuple(merged.get("image_std", OPENAI_DATASET_STD)),
        quick_gelu=bool(merged.get("quick_gelu", False)),
        tokenizer_name=tokenizer_name,
        description=str(merged.get("description", "")),
        extra={k: merged[k] for k in ("init_logit_scale",) if k in merged},
        image_channels=int(merged.get("image_channels", 3)),
        image_scaling=merged.get("image_scaling"),
    )
    _check_preprocess(name, spec)
    return spec


def _check_preprocess(name: str, spec: BackboneSpec) -> None:
    try:
        spec.preprocess()
    except ValueError as error:
        raise ValueError(f"backbone config {name!r}: {error}") from error


def _hybrid_spec_from_dict(name: str, raw: Mapping[str, Any]) -> BackboneSpec:
    if "open_clip_config" in raw or "quick_gelu" in raw:
        raise ValueError(f"backbone config {name!r}: a hybrid config takes no open_clip_config or quick_gelu")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in raw:
            raise ValueError(f"backbone config {name!r}: missing {key!r}")
    validate_hybrid_config(name, raw["vision_cfg"], raw["text_cfg"])
    scaling = raw.get("image_scaling")
    if scaling is None and ("image_mean" not in raw or "image_std" not in raw):
        raise ValueError(f"backbone config {name!r}: a hybrid config needs image_mean and image_std, or image_scaling")
    spec = BackboneSpec(
        name=name,
        embed_dim=int(raw["embed_dim"]),
        vision_cfg=copy.deepcopy(dict(raw["vision_cfg"])),
        text_cfg=copy.deepcopy(dict(raw["text_cfg"])),
        image_mean=tuple(raw.get("image_mean", ())),
        image_std=tuple(raw.get("image_std", ())),
        description=str(raw.get("description", "")),
        extra={k: raw[k] for k in ("init_logit_scale",) if k in raw},
        kind="hybrid",
        image_channels=int(raw.get("image_channels", 1 if scaling == "xrv" else 3)),
        image_scaling=scaling,
    )
    _check_preprocess(name, spec)
    return spec


def add_backbone_config(path: str | Path) -> list[str]:
    """Registers every ``*.json`` in a folder (or one JSON file); returns the names added.

    Each config is validated when added, so a bad file fails at import, not at first use.
    """
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    added = []
    for file in files:
        raw = json.loads(file.read_text(encoding="utf-8"))
        _spec_from_dict(file.stem, raw)
        _REGISTRY[file.stem] = raw
        added.append(file.stem)
    return added


def list_backbones() -> list[str]:
    """Names of the registered backbone configs, sorted."""
    return sorted(_REGISTRY)


def _open_clip_folder_config(folder: str | Path) -> dict[str, Any]:
    """The registry config of an open_clip model folder (what ``local-dir:<folder>`` names).

    open_clip's folder layout (``open_clip.create_model("local-dir:<folder>")`` reads the same):
    ``open_clip_config.json`` = ``{"model_cfg": {...}, "preprocess_cfg": {"mean": [...], "std": [...]}}``.

    Args:
        folder: a local folder (``~`` and ``package:`` paths as :func:`~ravl_med.models.weights.resolve_local_path`).

    Returns:
        ``model_cfg`` with ``image_mean``/``image_std`` from ``preprocess_cfg`` (open_clip's defaults,
        OpenAI's mean/std, when it has none).

    Raises:
        FileNotFoundError: the folder, or its ``open_clip_config.json``, does not exist.
        ValueError: the file is not JSON or has no ``model_cfg`` object.
    """
    path = resolve_local_path(folder, "open_clip model folder")
    file = path / OPEN_CLIP_FOLDER_CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {OPEN_CLIP_FOLDER_CONFIG}, so not an open_clip model folder")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON ({error})") from error
    if not isinstance(raw, dict) or not isinstance(raw.get("model_cfg"), dict):
        raise ValueError(f"{file}: no 'model_cfg' object (open_clip's layout: model_cfg and preprocess_cfg)")
    config = {**copy.deepcopy(raw["model_cfg"]), "description": f"open_clip model folder {path}"}
    preprocess = raw.get("preprocess_cfg") or {}
    for source, target in (("mean", "image_mean"), ("std", "image_std")):
        if source in preprocess:
            config[target] = preprocess[source]
    return config


def get_backbone_spec(name: str) -> BackboneSpec:
    """The resolved configuration of a registered name, ``open_clip:<name>`` or ``local-dir:<folder>``.

    Raises:
        KeyError: unknown name (the message lists the registered ones).
        ValueError: ``openai-clip``, whose architecture only its checkpoint knows; a config that is not valid.
        FileNotFoundError: a ``local-dir:`` folder, or its ``open_clip_config.json``, that does not exist.
    """
    if name.startswith(OPEN_CLIP_SCHEME):
        return _spec_from_dict(name, {"open_clip_config": name[len(OPEN_CLIP_SCHEME) :]})
    if name.startswith(LOCAL_DIR_SCHEME):
        return _spec_from_dict(name, _open_clip_folder_config(name[len(LOCAL_DIR_SCHEME) :]))
    if name == OPENAI_LAYOUT:
        raise ValueError(f"backbone {OPENAI_LAYOUT!r} has no config: open_clip infers it from the checkpoint's shapes")
    if name not in _REGISTRY:
        raise KeyError(
            f"unknown backbone {name!r}; registered: {', '.join(list_backbones())} "
            f"(or open_clip:<name>, local-dir:<folder>, {OPENAI_LAYOUT})"
        )
    return _spec_from_dict(name, _REGISTRY[name])


def _build_openai_layout(checkpoint: str | Path | None, sha256: str | None) -> tuple[CLIP, BackboneSpec]:
    """The CLIP an OpenAI-layout state dict describes, holding exactly the file's weights.

    open_clip's builder infers the architecture (ViT or ModifiedResNet, widths, layers, input size,
    context length) from the shapes and sets QuickGELU, as OpenAI trained it. It loads the weights
    into a float16 copy; loading them again into the float32 model keeps a float32 file's precision
    (float16 files, as OpenAI ships them, give the same weights either way).
    """
    if checkpoint is None:
        raise ValueError(
            f"backbone {OPENAI_LAYOUT!r} reads its architecture from the checkpoint: give one "
            "(an OpenAI-CLIP-layout state dict, e.g. a CheXzero .pt)"
        )
    file = resolve_checkpoint(checkpoint)
    state = {k: v for k, v in load_state_dict(file, sha256=sha256).items() if k not in OPENAI_METADATA_KEYS}
    try:
        model = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None)
    except (KeyError, RuntimeError, AssertionError) as error:
        detail = f"no {error}" if isinstance(error, KeyError) else " ".join(str(error).split())
        raise WeightsError(f"{file}: not an OpenAI-CLIP-layout state dict ({detail})") from error
    model.float().load_state_dict(state)
    spec = BackboneSpec(
        name=OPENAI_LAYOUT,
        embed_dim=int(model.text_projection.shape[1]),
        vision_cfg={"image_size": model.visual.image_size},
        text_cfg={"context_length": int(model.context_length)},
        quick_gelu=True,
        description=f"OpenAI-CLIP-layout checkpoint {file}",
    )
    return model, spec


def _tokenizer(spec: BackboneSpec) -> Callable[..., torch.Tensor]:
    if spec.tokenizer_name is not None:
        return open_clip.get_tokenizer(spec.tokenizer_name)
    # As open_clip.get_tokenizer: the config's tokenizer_kwargs (e.g. text cleaning) apply.
    kwargs = spec.text_cfg.get("tokenizer_kwargs") or {}
    return SimpleTokenizer(context_length=int(spec.text_cfg.get("context_length", 77)), **kwargs)


def create_backbone(
    name: str,
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    image_checkpoint: str | Path | None = None,
    image_sha256: str | None = None,
) -> tuple[CLIP | HybridCLIP, RadiographPreprocess, Callable[..., torch.Tensor]]:
    """Builds a registered backbone, optionally filled with local weights.

    Args:
        name: registered name (see :func:`list_backbones`), ``open_clip:<name>``,
            ``local-dir:<open_clip model folder>`` or ``openai-clip`` (see the module docstring).
        checkpoint: local checkpoint file or folder of the whole model (e.g. after fine-tuning);
            ``None`` keeps the initialisation (random for open_clip configs; the configured
            pretrained towers for hybrids); required for ``openai-clip``. Nothing is ever downloaded.
        sha256: expected hex digest of the checkpoint file.
        device: where the model and the preprocessing buffers live.
        strict: refuse checkpoints with missing or unexpected keys (``openai-clip`` is always strict).
        image_checkpoint: hybrids only: local weights of the image backbone alone (e.g. a
            torchxrayvision DenseNet state dict), overriding the config's ``vision_cfg["checkpoint"]``.
        image_sha256: expected hex digest of ``image_checkpoint``.

    Returns:
        ``(model, preprocess, tokenizer)``: an open_clip ``CLIP`` or a :class:`HybridCLIP`, in eval
        mode (call ``.train()`` to fine-tune); a module turning (1, S, S) / (B, 1, S, S) [0, 1]
        images into normalised (K, N, N) / (B, K, N, N) input, N = the tower's input size, K its
        channels; a callable mapping a string or list of strings to (n, context_length) int64 ids.

    Raises:
        FileNotFoundError: a local path (checkpoint, tower weights, text or model folder) that does not exist.
        ChecksumError, WeightsError: see :mod:`ravl_med.models.weights`; WeightsError also for a
            checkpoint that is not an OpenAI-CLIP layout under ``openai-clip``.
    """
    spec = None if name == OPENAI_LAYOUT else get_backbone_spec(name)
    if image_checkpoint is not None and (spec is None or spec.kind != "hybrid"):
        raise ValueError(f"image_checkpoint is for hybrid backbones; {name!r} is an open_clip model (use checkpoint)")
    tokenizer: Callable[..., torch.Tensor]
    if spec is None:  # openai-clip: the checkpoint is the architecture and the weights
        model, spec = _build_openai_layout(checkpoint, sha256)
        tokenizer = _tokenizer(spec)
    elif spec.kind == "hybrid":
        model, tokenizer = build_hybrid(
            spec.embed_dim,
            spec.vision_cfg,
            spec.text_cfg,
            image_checkpoint=image_checkpoint,
            image_sha256=image_sha256,
            **spec.extra,
        )
    else:
        model = CLIP(
            embed_dim=spec.embed_dim,
            vision_cfg=copy.deepcopy(spec.vision_cfg),
            text_cfg=copy.deepcopy(spec.text_cfg),
            quick_gelu=spec.quick_gelu,
            **spec.extra,
        )
        tokenizer = _tokenizer(spec)
    if checkpoint is not None and name != OPENAI_LAYOUT:
        load_checkpoint(model, checkpoint, sha256=sha256, strict=strict)
    model = model.to(device).eval()
    preprocess = spec.preprocess().to(device)
    return model, preprocess, tokenizer


add_backbone_config(CONFIG_DIR)
