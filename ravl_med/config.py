"""Run configurations: YAML files validated on load.

Each command reads one YAML file into a pydantic model. Unknown keys and bad values are refused
with a :class:`ConfigError` whose message names the file, the dotted key, what was given and what
is allowed, e.g.::

    configs/ingest.yaml: intensity.voi: got 'windw'; allowed: 'auto', 'lut', 'window', 'none'
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

__all__ = [
    "ConfigError",
    "DataSource",
    "FinetuneConfig",
    "FinetuneRecipe",
    "IngestConfig",
    "IntensityConfig",
    "ModelSource",
    "ProposalConfig",
    "QualityConfig",
    "RegionConfig",
    "StrictModel",
    "Threads",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message says which key and why."""


def _distinct(value: list[str], what: str) -> list[str]:
    """``value`` unchanged, or ValueError("<what> must be distinct") when an entry repeats."""
    if len(set(value)) != len(value):
        raise ValueError(f"{what} must be distinct")
    return value


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


#: CPU threads of a stage (``threads`` of the fine-tuning recipe and of the audit settings).
Threads = Annotated[int, Field(ge=1, le=256)]


class IntensityConfig(StrictModel):
    """How modality values become display values in [0, 1] (see ``VOIWindow``)."""

    voi: Literal["auto", "lut", "window", "none"] = "auto"
    #: (centre, width) in modality units; overrides the files' own windows when set.
    window: tuple[float, Annotated[float, Field(gt=0)]] | None = None
    fallback: Literal["value_range", "minmax", "percentile"] = "value_range"
    percentiles: tuple[Annotated[float, Field(ge=0, le=100)], Annotated[float, Field(ge=0, le=100)]] = (0.5, 99.5)

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"lower percentile {value[0]} must be below upper {value[1]}")
        return value


#: Per-method defaults of ProposalConfig's method-specific keys.
_PROPOSAL_DEFAULTS: dict[str, dict[str, object]] = {
    "slic": {"n_segments": [24], "compactness": 0.1},
    "felzenszwalb": {"scale": [100.0]},
}


class ProposalConfig(StrictModel):
    """Content-driven candidate regions: boxes around superpixels of the model-ready image (see
    ``RegionProposals``). Generic parameters only: nothing here knows what a shortcut looks like."""

    #: slic: superpixels of similar size, about ``n_segments`` per scale; felzenszwalb: graph-based,
    #: the segment count follows the image.
    method: Literal["slic", "felzenszwalb"] = "slic"
    #: slic only: superpixels asked for, one segmentation (scale) per entry, e.g. [16, 48]; default [24].
    n_segments: list[Annotated[int, Field(ge=2, le=1024)]] | None = Field(default=None, min_length=1, max_length=6)
    #: slic only: weight of space against intensity (intensities in [0, 1]); larger: squarer superpixels; default 0.1.
    compactness: Annotated[float, Field(gt=0.0, le=100.0)] | None = None
    #: felzenszwalb only: segment scale, one segmentation per entry; larger: bigger segments; default [100].
    scale: list[Annotated[float, Field(gt=0.0, le=100000.0)]] | None = Field(default=None, min_length=1, max_length=6)
    #: Gaussian smoothing before segmenting, pixels.
    sigma: Annotated[float, Field(ge=0.0, le=10.0)] = 1.0
    #: Smallest kept box width and height, fractions of the content's width and height (drops slivers).
    min_size: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    #: Largest kept box width and height, same fractions (drops near-whole-image boxes).
    max_size: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75
    #: Growth of each superpixel's box on every side, fraction of its own side (context around it).
    margin: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    #: A box whose IoU with an earlier one (coarser scales first) exceeds this is dropped; 1: exact duplicates only.
    max_iou: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data):
        # The keys of the chosen method get their defaults; the other method's stay null (and are
        # refused when set), so a dumped config reads back unchanged.
        if isinstance(data, dict):
            given = {k: v for k, v in data.items() if v is not None}
            defaults = _PROPOSAL_DEFAULTS.get(given.get("method", "slic"), {})
            data = {**data, **{k: v for k, v in defaults.items() if k not in given}}
        return data

    @field_validator("n_segments", "compactness", "scale")
    @classmethod
    def _for_the_method(cls, value, info: ValidationInfo):
        owner = "felzenszwalb" if info.field_name == "scale" else "slic"
        method = info.data.get("method")
        if value is not None and method is not None and method != owner:
            raise ValueError(f"only used by method {owner!r}, but method is {method!r}")
        return value

    @field_validator("max_size")
    @classmethod
    def _above_min_size(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("min_size")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_size ({low})")
        return value

    def granularity(self) -> list[float]:
        """The per-scale setting of ``method``: ``n_segments`` (slic) or ``scale`` (felzenszwalb)."""
        return [float(v) for v in ((self.n_segments if self.method == "slic" else self.scale) or [])]


class RegionConfig(StrictModel):
    """Candidate regions laid on each model-ready image: grids (``RegionGrid``), content-driven
    proposals (``RegionProposals``) or both, grid boxes first."""

    #: One regular grid per entry (cells per side); [] for no grid (needs proposals). Default: 2 x 2, 3 x 3
    #: and 4 x 4 cells with half-cell overlap, 9 + 25 + 49 = 83 boxes per image. Measured on the demo's
    #: setting at seeds 0-4 (benchmarks/discovery_seeds.py, BENCHMARKS.md): RaVL found the drain in 5 of 5
    #: seeds (P@10 1.00) against 3 of 5 with the single 3 x 3 grid (a thin feature is cut by fixed cells).
    grid_sizes: list[Annotated[int, Field(ge=1, le=32)]] = Field(default_factory=lambda: [2, 3, 4])
    #: Fraction of a grid cell shared with its neighbour, in [0, 1).
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    #: content: regions cover only the image (not the letterbox padding); image: the whole square.
    within: Literal["content", "image"] = "content"
    #: Superpixel boxes added after the grid boxes (their count differs between images); null: grids only.
    proposals: ProposalConfig | None = None

    @model_validator(mode="after")
    def _some_family(self) -> RegionConfig:
        if not self.grid_sizes and self.proposals is None:
            raise ValueError("no candidate regions: give grid_sizes or proposals")
        return self


class QualityConfig(StrictModel):
    """What an image must satisfy to be used (see ``RadiographQC`` and ``CollapseGreyChannels``)."""

    min_side: Annotated[int, Field(ge=8)] = 64
    max_side: Annotated[int, Field(ge=8)] = 16384
    #: Modalities expected for chest radiographs; others load with a warning.
    expected_modalities: list[str] = Field(default_factory=lambda: ["CR", "DX"])
    #: Allowed channel difference of a "grey" RGB image, as a fraction of its value range.
    colour_tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.04


class IngestConfig(StrictModel):
    """The ingestion path: from a file on disk to a model-ready (1, size, size) tensor in [0, 1]."""

    image_size: Annotated[int, Field(ge=16, le=4096)] = 224
    intensity: IntensityConfig = Field(default_factory=IntensityConfig)
    regions: RegionConfig = Field(default_factory=RegionConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    #: Class names a manifest's labels must come from; empty means "whatever the manifest says".
    classes: list[str] = Field(default_factory=list)

    def region_setting(self) -> dict:
        """What makes a region set: the ingested side and the candidate-region settings (JSON-ready).

        Recorded with the audit's stage-1 medoids; mitigation must label training regions made the same way.
        """
        regions = self.regions.model_dump(mode="json")
        if regions["proposals"] is None:
            # Grids only: recorded exactly as before proposals existed, so earlier audits stay usable.
            del regions["proposals"]
        return {"image_size": self.image_size, "regions": regions}


class ModelSource(StrictModel):
    """Which model: a registered backbone and its local weights (shared by every stage's config)."""

    #: Registered backbone name (``ravl_med.models.list_backbones()``), ``open_clip:<name>``,
    #: ``local-dir:<open_clip model folder>`` or ``openai-clip`` (architecture read from the checkpoint).
    backbone: str = "tiny-rn"
    #: Local weights (file or folder) and their expected sha256; ``None``: the backbone's own initialisation.
    checkpoint: Path | None = None
    sha256: str | None = None


class DataSource(StrictModel):
    """Which data: a manifest, its classes in zero-shot output order, prompts and ingestion."""

    #: Manifest CSV (rows with a label outside ``classes`` are refused; a row with several labels stops the run).
    manifest: Path | None = None
    #: Class names, in the order of zero-shot outputs.
    classes: list[str] = Field(min_length=1)
    #: Zero-shot prompt templates with one ``{}``; ``None``: ``CXR_TEMPLATES``.
    templates: list[str] | None = None
    #: Ingestion, including the candidate region grid (``ingest.regions``).
    ingest: IngestConfig = Field(default_factory=IngestConfig)

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("templates must not be empty (leave it out for the default CXR templates)")
            bad = [t for t in value if t.count("{}") != 1]
            if bad:
                raise ValueError(f"each template needs exactly one '{{}}' for the class name: {bad}")
        return value

    _distinct_classes = field_validator("classes")(classmethod(lambda cls, v: _distinct(v, "classes")))


class FinetuneRecipe(StrictModel):
    """How to fine-tune (the recipe, without the model and data it is applied to).

    Steps are optimizer steps (one per ``grad_accum_steps`` micro-batches); ``batch_size`` is per
    process, so the effective batch is ``batch_size * grad_accum_steps * world_size``.
    """

    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=2)] = 32
    lr: Annotated[float, Field(gt=0)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    grad_accum_steps: Annotated[int, Field(ge=1)] = 1
    #: Keep the text tower fixed (only the image tower and the temperature train).
    freeze_text: bool = False
    #: Encode each distinct training text once and reuse it every epoch (needs ``freeze_text``: the text
    #: tower is then a fixed function; the same embeddings up to float rounding, trailing padding trimmed).
    cache_text: bool = False
    #: Freeze the image backbone but its last ``lock_image_unlocked_groups`` layer groups (open_clip's
    #: ``--lock-image``; hybrid towers; timm's coarse groups, EfficientNet-Lite0 has 8). Frozen groups keep
    #: their pretrained BatchNorm statistics; a frozen input-side prefix runs without gradient.
    lock_image: bool = False
    lock_image_unlocked_groups: Annotated[int, Field(ge=0)] = 0
    #: Compute that frozen prefix once per training image and keep its feature maps in memory (needs
    #: ``lock_image``; only when an image is the same every epoch: mitigation methods that swap regions
    #: train uncached). Memory: the prefix's map per image (EfficientNet-Lite0, 3 unlocked groups, 224 px:
    #: 80 x 14 x 14 floats, 63 KB).
    cache_frozen_features: bool = False
    #: CPU: convolution weights and image batches in channels-last (NHWC) memory layout. Measured with the
    #: hybrid's EfficientNet at 224 px, 1 thread: 1.6x faster frozen prefix and trainable tail
    #: (oneDNN's depthwise convolutions); numerics differ in the last bits from the default layout.
    channels_last: bool = False
    #: MedCLIP-style soft targets: pairs sharing a label count as positives.
    label_aware: bool = False
    #: Text paired with each image: ``report`` (the manifest's report; the label sentence when it is
    #: empty) or ``labels`` (always the label sentence "a chest x-ray showing <labels>.").
    text: Literal["report", "labels"] = "report"
    #: Write a full training state every N optimizer steps (0: only at the end of each epoch).
    checkpoint_every: Annotated[int, Field(ge=0)] = 500
    #: Training states kept on disk (older ones are deleted).
    keep_checkpoints: Annotated[int, Field(ge=1)] = 2
    #: DataLoader worker processes (0: load in the training process).
    workers: Annotated[int, Field(ge=0)] = 0
    #: Keep decoded, ingested images in memory after the first epoch (per process; small datasets
    #: read many times: the phantom benchmark). Memory: about 4 * size^2 bytes per image and region set.
    cache_images: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: ``auto``: bf16 autocast on CUDA when supported, fp32 otherwise.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Intra-op CPU threads (torch and BLAS). Results depend on it, so it is fixed here, not taken
    #: from the machine; 1 gives the same numbers on any machine (see ``ravl_med.reproducibility``).
    threads: Threads = 1

    @model_validator(mode="after")
    def _caches_need_frozen_towers(self) -> "FinetuneRecipe":
        if self.cache_text and not self.freeze_text:
            raise ValueError("cache_text needs freeze_text: true (a trained text tower changes every step)")
        if self.cache_frozen_features and not self.lock_image:
            raise ValueError("cache_frozen_features needs lock_image: true (only a frozen prefix can be cached)")
        return self


class FinetuneConfig(FinetuneRecipe, DataSource, ModelSource):
    """Contrastive fine-tuning of a backbone on a manifest of image-report pairs (``ravl-med finetune``).

    ``checkpoint`` holds the starting weights (``None``: random init); the manifest's ``train`` rows
    train and its ``val`` rows validate; classes need at least two names.
    """

    classes: list[str] = Field(min_length=2)
    seed: Annotated[int, Field(ge=0)] = 0
    output_dir: Path = Path("runs/finetune")


ModelT = TypeVar("ModelT", bound=BaseModel)


def _allowed(model: type[BaseModel], loc: tuple) -> str:
    """The allowed keys at ``loc`` (a pydantic error location) of ``model``, for error messages."""
    current: typing.Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return ""
        annotation = field.annotation
        candidates = [annotation, *typing.get_args(annotation)]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return ""
    return ", ".join(getattr(current, "model_fields", {}))


def _describe(error: dict, model: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; allowed keys here: {_allowed(model, loc)}"
    if error["type"] == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{key}: got {error['input']!r}; allowed: {expected}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    if isinstance(error.get("input"), dict):  # a rule across keys: the whole section is not worth printing
        return f"{key}: {error['msg'].removeprefix('Value error, ')}"
    return f"{key}: got {error.get('input')!r}; {error['msg']}"


def parse_config(data: object, model: type[ModelT], source: str = "config") -> ModelT:
    """Validates an already-parsed mapping against ``model``; raises :class:`ConfigError`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        lines = [f"{source}: {_describe(e, model)}" for e in err.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path | None, model: type[ModelT]) -> ModelT:
    """Reads a YAML config into ``model``; ``None`` gives the defaults.

    Raises:
        ConfigError: the file is missing, is not YAML, or has unknown keys or bad values.
    """
    if path is None:
        return model()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return parse_config(data, model, str(path))
