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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# The one module of a library layer imported here: the audit section embeds RaVL's discovery parameters.
from ravl_med.discover.config import DiscoveryConfig

__all__ = [
    "AUDIT_METHODS",
    "MITIGATION_METHODS",
    "AuditConfig",
    "BenchmarkConfig",
    "BenchmarkMitigation",
    "ConfigError",
    "EvaluationConfig",
    "FinetuneConfig",
    "IngestConfig",
    "IntensityConfig",
    "MitigateConfig",
    "MitigationSettings",
    "QualityConfig",
    "RegionConfig",
    "ReportConfig",
    "load_config",
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


class RegionConfig(StrictModel):
    """Candidate regions laid on each model-ready image (see ``RegionGrid``)."""

    grid_sizes: list[Annotated[int, Field(ge=1, le=32)]] = Field(default_factory=lambda: [4], min_length=1)
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    within: Literal["content", "image"] = "content"


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


class FinetuneConfig(StrictModel):
    """Contrastive fine-tuning of a backbone on a manifest of image-report pairs (``ravl-med finetune``).

    Steps are optimizer steps (one per ``grad_accum_steps`` micro-batches); ``batch_size`` is per
    process, so the effective batch is ``batch_size * grad_accum_steps * world_size``.
    """

    #: Registered backbone name (``ravl_med.models.list_backbones()``) or ``open_clip:<name>``.
    backbone: str = "tiny-rn"
    #: Local starting weights (file or folder) and their expected sha256; ``None``: random init.
    checkpoint: Path | None = None
    sha256: str | None = None
    #: Manifest CSV of image-report pairs (``train`` rows train, ``val`` rows validate).
    manifest: Path | None = None
    #: Class names, in the order of zero-shot outputs; first labels must come from them.
    classes: list[str] = Field(min_length=2)
    #: Zero-shot prompt templates with one ``{}``; ``None``: ``CXR_TEMPLATES``.
    templates: list[str] | None = None
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    epochs: Annotated[int, Field(ge=1)] = 10
    batch_size: Annotated[int, Field(ge=2)] = 32
    lr: Annotated[float, Field(gt=0)] = 1e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    grad_accum_steps: Annotated[int, Field(ge=1)] = 1
    #: Keep the text tower fixed (only the image tower and the temperature train).
    freeze_text: bool = False
    #: MedCLIP-style soft targets: pairs sharing a label count as positives.
    label_aware: bool = False
    #: Text paired with each image: ``report`` (the manifest's report; the label sentence when it is
    #: empty) or ``labels`` (always the label sentence "a chest x-ray showing <labels>.").
    text: Literal["report", "labels"] = "report"
    #: Write a full training state every N optimizer steps (0: only at the end of each epoch).
    checkpoint_every: Annotated[int, Field(ge=0)] = 500
    #: Training states kept on disk (older ones are deleted).
    keep_checkpoints: Annotated[int, Field(ge=1)] = 2
    seed: Annotated[int, Field(ge=0)] = 0
    #: DataLoader worker processes (0: load in the training process).
    workers: Annotated[int, Field(ge=0)] = 0
    #: Keep decoded, ingested images in memory after the first epoch (per process; small datasets
    #: read many times: the phantom benchmark). Memory: about 4 * size^2 bytes per image and region set.
    cache_images: bool = False
    output_dir: Path = Path("runs/finetune")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: ``auto``: bf16 autocast on CUDA when supported, fp32 otherwise.
    precision: Literal["auto", "fp32", "bf16"] = "auto"

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


# --------------------------------------------------------------------------------------------- #
# Audit (``ravl-med audit``): RaVL stage 1 on a fine-tuned model, with baselines and ground truth.

#: Discovery methods an audit can run: the names of ``ravl_med.discover.registry.DISCOVERY_METHODS``,
#: written out because importing the registry would load scikit-learn with every config (and
#: ``ravl-med --help``); a test keeps the two equal.
AUDIT_METHODS = ("ravl", "random", "distilling_failures", "george", "domino")


class EvaluationConfig(StrictModel):
    """Ground-truth evaluation of the ranked regions (Precision@k), when the manifest allows it."""

    #: ``auto``: phantom manifests (``mask_artefact`` column) use the artefact masks, digits manifests
    #: (``square_quadrant``) the quadrant rule; ``none`` skips the evaluation.
    ground_truth: Literal["auto", "mask", "quadrant", "none"] = "auto"
    #: k of Precision@k (paper: 10).
    precision_k: Annotated[int, Field(ge=1)] = 10
    #: Mask overlap rule (``ravl_med.discover.metrics.OVERLAP_RULES``) and its fraction.
    overlap_rule: Literal["either", "both", "feature", "region", "any"] = "either"
    overlap_threshold: Annotated[float, Field(gt=0, le=1)] = 0.25


class ReportConfig(StrictModel):
    """What the human-readable outputs show."""

    #: Regions per gallery (tiles: the image with the box drawn, and the zoomed region).
    gallery_regions: Annotated[int, Field(ge=1, le=100)] = 12
    #: Tiles per gallery row.
    gallery_columns: Annotated[int, Field(ge=1, le=10)] = 3
    #: Side of each tile panel, pixels.
    tile_size: Annotated[int, Field(ge=48, le=512)] = 160
    #: Galleries per baseline method (RaVL always gets one per kept cluster); 0: none.
    baseline_galleries: Annotated[int, Field(ge=0)] = 1


class AuditConfig(StrictModel):
    """A shortcut audit of a fine-tuned model (``ravl-med audit``; see ``configs/audit.yaml``)."""

    #: Registered backbone name (``ravl_med.models.list_backbones()``) or ``open_clip:<name>``.
    backbone: str = "tiny-rn"
    #: Fine-tuned weights (file, or a fine-tuning output folder) and their expected sha256.
    checkpoint: Path | None = None
    sha256: str | None = None
    #: Labelled evaluation manifest (deployment distribution: the shortcut is not enforced).
    manifest: Path | None = None
    #: Manifest split to audit; ``None``: every row.
    split: str | None = "test"
    #: Class names, in zero-shot output order (rows whose labels are not among them are refused).
    classes: list[str] = Field(min_length=1)
    #: Prompt templates with one ``{}``; ``None``: ``CXR_TEMPLATES``.
    templates: list[str] | None = None
    #: Ingestion, including the candidate region grid (``ingest.regions``).
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    #: ``one_pass`` (RoIAlign on the feature map) or ``crop`` (crop and re-encode each region).
    region_mode: Literal["one_pass", "crop"] = "one_pass"
    #: Methods to run, RaVL first by convention; every method gets the same outputs.
    methods: list[Literal["ravl", "random", "distilling_failures", "george", "domino"]] = Field(
        default_factory=lambda: ["ravl"], min_length=1)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    output_dir: Path = Path("runs/audit")
    #: Embedding cache (resumable); ``None``: ``output_dir/cache``.
    cache_dir: Path | None = None
    #: Images per forward pass (and per cache shard).
    batch_size: Annotated[int, Field(ge=1)] = 32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: Annotated[int, Field(ge=0)] = 0

    _one_slot = field_validator("templates")(classmethod(lambda cls, v: FinetuneConfig._one_slot(v)))
    _distinct_classes = field_validator("classes")(classmethod(lambda cls, v: _distinct(v, "classes")))
    _distinct_methods = field_validator("methods")(classmethod(lambda cls, v: _distinct(v, "methods")))

    @property
    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, or ``output_dir/cache`` when unset."""
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.output_dir) / "cache"


MitigationMethod = Literal["ravl", "standard", "upsampled", "vl_erm", "vl_gdro", "spurious_aware"]
#: The mitigation methods (``ravl_med.mitigate.methods``), RaVL first.
MITIGATION_METHODS: tuple[str, ...] = typing.get_args(MitigationMethod)


class MitigationSettings(StrictModel):
    """The method and its knobs (shared by ``ravl-med mitigate`` and the benchmark runner)."""

    method: MitigationMethod = "ravl"
    #: 1-based ranks of the audit's kept clusters treated as spurious (default: the top-ranked
    #: cluster, the one the audit reports); null: every kept cluster.
    spurious_ranks: list[Annotated[int, Field(ge=1)]] | None = Field(default_factory=lambda: [1])
    #: lambda of L = lambda * L_CLIP + (1 - lambda) * (L_R + L_A).
    loss_lambda: Annotated[float, Field(ge=0, le=1)] = 0.8
    #: tau of the region-text terms (and of the spurious-aware term).
    temperature: Annotated[float, Field(gt=0)] = 0.07
    #: GroupDRO exponentiated-gradient step size (vl_gdro).
    gdro_step_size: Annotated[float, Field(gt=0)] = 0.01
    #: Texts naming the spurious attribute (spurious_aware), e.g. "a chest x-ray with a chest drain.".
    spurious_prompts: list[str] = Field(default_factory=list)
    #: Weight of the spurious-aware term.
    spurious_weight: Annotated[float, Field(ge=0)] = 1.0
    #: Images per forward when labelling the training regions with the stage-1 model.
    label_batch_size: Annotated[int, Field(ge=1)] = 32


class MitigateConfig(MitigationSettings):
    """Region-aware fine-tuning and its baselines after an audit (``ravl-med mitigate``).

    ``finetune`` is a whole fine-tuning config: its ``checkpoint`` holds the starting weights (the
    paper's protocol: the same pretrained weights stage 1 started from; ``None`` keeps the
    backbone's own initialisation), its ``manifest`` the fine-tuning data. ``stage1_checkpoint`` is
    the model the audit examined: the training regions are labelled with it (spurious or relevant,
    by nearest stage-1 medoid). Each method writes to ``finetune.output_dir/<method>``.
    """

    finetune: FinetuneConfig
    #: The audited stage-1 model (file or fine-tuning folder) and its expected sha256.
    stage1_checkpoint: Path | None = None
    stage1_sha256: str | None = None
    #: The audit folder (``medoids.npz``: the stage-1 medoids, see ``ravl_med.mitigate.regions``).
    audit_dir: Path | None = None


class BenchmarkMitigation(MitigationSettings):
    """How the benchmark mitigates each valid setting (the method knobs of :class:`MitigationSettings`).

    Every method starts from the weights stage 1 started from (``finetune.checkpoint`` of the
    benchmark; ``None``: the backbone's own initialisation) and trains with the stage-1 recipe, the
    same seed and the same number of epochs: the paper's protocol ("same seed, same budget").
    ``standard`` under that protocol *is* the stage-1 model, so it is not trained twice.
    """

    #: Methods to compare (``method`` of the settings is ignored); RaVL first by convention.
    methods: list[MitigationMethod] = Field(default_factory=lambda: list(MITIGATION_METHODS), min_length=1)
    #: Texts naming the spurious attribute for ``spurious_aware``, with ``{}`` for the artefact's
    #: name in words (``chest_drain`` -> ``chest drain``).
    spurious_template: str = "a chest x-ray with a {}."

    _distinct_methods = field_validator("methods")(classmethod(lambda cls, v: _distinct(v, "methods")))


class BenchmarkConfig(StrictModel):
    """End-to-end runs over phantom settings (``ravl-med benchmark``, ``ravl-med demo``).

    Per setting: write the phantom DICOMs, fine-tune stage 1 (``finetune``), judge validity (did the
    model learn the shortcut?), audit (``audit``: RaVL and the discovery baselines, Precision@k),
    then, for valid settings, every mitigation method and the stage-2 evaluation on the test split.
    ``manifest``, ``classes``, ``output_dir`` (and ``checkpoint`` for the audit) of the two sections
    are set per setting; the audit's region grid is also the mitigation's training grid.
    """

    #: Phantom suite: a name in ``datasets/phantom`` or a YAML path.
    suite: str
    #: Setting names (or shell patterns such as ``*-v0.90-*``) of the suite to run (``None``: all);
    #: they run in suite order.
    settings: list[str] | None = None
    finetune: FinetuneConfig
    audit: AuditConfig
    mitigation: BenchmarkMitigation = Field(default_factory=BenchmarkMitigation)
    #: Validity: acc(spurious class | feature) - acc(spurious class | no feature) on the test split
    #: of the stage-1 model must reach this (``evaluate.groups.shortcut_learned``); -1 keeps every setting.
    min_shortcut_gap: Annotated[float, Field(ge=-1, le=1)] = 0.2
    #: Bootstrap resamples for the per-group confidence intervals of the stage-2 tables.
    n_boot: Annotated[int, Field(ge=0)] = 1000
    output_dir: Path = Path("runs/benchmark")
