"""The stage configs: what ``ravl-med audit``, ``mitigate``, ``benchmark`` and ``demo`` read.

Each is composed of the shared sources of :mod:`ravl_med.config` (:class:`~ravl_med.config.ModelSource`,
:class:`~ravl_med.config.DataSource`) and the settings of its stage, so that a model or data source is
declared once. A benchmark names its model, prompts and ingestion once for every stage of a setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from ravl_med.config import (
    DataSource,
    FinetuneConfig,
    FinetuneRecipe,
    IngestConfig,
    ModelSource,
    StrictModel,
    Threads,
    _distinct,
)
from ravl_med.discover.config import DiscoveryConfig
from ravl_med.discover.registry import DISCOVERY_METHODS
from ravl_med.mitigate.registry import MITIGATION_METHODS

__all__ = [
    "AUDIT_METHODS",
    "AuditConfig",
    "AuditSettings",
    "BenchmarkConfig",
    "BenchmarkMitigation",
    "EvaluationConfig",
    "MitigateConfig",
    "MitigationEvaluation",
    "MitigationSettings",
    "ReportConfig",
]


# --------------------------------------------------------------------------------------------- #
# Audit (``ravl-med audit``): RaVL stage 1 on a fine-tuned model, with baselines and ground truth.

#: Discovery methods an audit can run (RaVL and the baselines; ``ravl_med.discover.registry``).
AUDIT_METHODS: tuple[str, ...] = tuple(DISCOVERY_METHODS)
DiscoveryMethod = Literal[AUDIT_METHODS]  # type: ignore[valid-type]


class EvaluationConfig(StrictModel):
    """Ground-truth evaluation of the ranked regions (Precision@k), when the manifest allows it."""

    #: ``auto``: phantom manifests (``mask_artefact`` column) use the artefact masks, digits manifests
    #: (``square_quadrant``) the quadrant rule; ``none`` skips the evaluation.
    ground_truth: Literal["auto", "mask", "quadrant", "none"] = "auto"
    #: k of Precision@k (paper: 10).
    precision_k: Annotated[int, Field(ge=1)] = 10
    #: Mask hit rule (``ravl_med.discover.metrics.OVERLAP_RULES``): "visible" (default) = a reviewer
    #: would see the feature in the crop (fitted to by-eye labels); "either" was the default before.
    overlap_rule: Literal["visible", "either", "both", "feature", "region", "any"] = "visible"
    #: The rule's threshold; ``None``: the rule's own (``ravl_med.discover.metrics.RULE_THRESHOLDS``).
    overlap_threshold: Annotated[float, Field(gt=0, le=1)] | None = None


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
    #: Galleries show only the enlarged regions, not the whole image: for images that may hold
    #: burned-in text (names, dates) outside the region. The report warns when this is off and a gallery
    #: image's DICOM header says BurnedInAnnotation YES or its pixels hold lines of text-like marks.
    crops_only: bool = False


class AuditSettings(StrictModel):
    """How to audit (without the model and data it is applied to)."""

    #: Manifest split to audit; ``None``: every row.
    split: str | None = "test"
    #: ``one_pass`` (RoIAlign on the feature map) or ``crop`` (crop and re-encode each region).
    region_mode: Literal["one_pass", "crop"] = "one_pass"
    #: Methods to run, RaVL first by convention; every method gets the same outputs.
    methods: list[DiscoveryMethod] = Field(default_factory=lambda: ["ravl"], min_length=1)
    discovery: DiscoveryConfig = Field(default_factory=DiscoveryConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    #: Images per forward pass (and per cache shard).
    batch_size: Annotated[int, Field(ge=1)] = 32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: Intra-op CPU threads (torch and BLAS); results depend on it (``ravl_med.reproducibility``).
    threads: Threads = 1
    #: Fewer images than this of any class, and the audit's outcome is ``too_little_data`` whatever the
    #: methods found: a class's accuracy with / without a feature from under 20 images has a 95% interval
    #: wider than +-0.2, too wide to tell a shortcut from chance.
    min_images_per_class: Annotated[int, Field(ge=1)] = 20
    #: Zero-shot accuracy at or below this (``None``: chance, 1 / number of classes) also gives
    #: ``too_little_data``: a model that does not tell the classes apart on these images (wrong class
    #: names, prompts or preprocessing) has no errors a shortcut could explain.
    min_zero_shot_accuracy: Annotated[float, Field(ge=0, lt=1)] | None = None

    _distinct_methods = field_validator("methods")(classmethod(lambda cls, v: _distinct(v, "methods")))


class AuditConfig(AuditSettings, DataSource, ModelSource):
    """A shortcut audit of a fine-tuned model (``ravl-med audit``; see ``configs/audit.yaml``).

    ``checkpoint`` holds the fine-tuned weights (file, or a fine-tuning output folder); the manifest
    is labelled evaluation data (deployment distribution: the shortcut is not enforced).
    """

    output_dir: Path = Path("runs/audit")
    #: Embedding cache (resumable); ``None``: ``output_dir/cache``.
    cache_dir: Path | None = None
    seed: Annotated[int, Field(ge=0)] = 0

    @property
    def resolved_cache_dir(self) -> Path:
        """``cache_dir``, or ``output_dir/cache`` when unset."""
        return Path(self.cache_dir) if self.cache_dir is not None else Path(self.output_dir) / "cache"


MitigationMethod = Literal[tuple(MITIGATION_METHODS)]  # type: ignore[valid-type]


class MitigationSettings(StrictModel):
    """The method and its knobs (shared by ``ravl-med mitigate`` and the benchmark runner)."""

    #: Default: the method that measured best on worst-group accuracy (BENCHMARKS.md, "Mitigation over seeds").
    method: MitigationMethod = "counterfactual_upsampled"
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


class MitigationEvaluation(StrictModel):
    """The test evaluation that follows mitigation (:func:`~ravl_med.stages.evaluate.run_evaluation`)."""

    #: Evaluate the trained model when the manifest has rows of ``split``.
    enabled: bool = True
    split: str = "test"
    #: Adds the share of each group predicted as this class to the group table.
    spurious_class: str | None = None
    #: Images per forward pass.
    batch_size: Annotated[int, Field(ge=1)] = 64
    #: Bootstrap resamples of the group table's 95% intervals.
    n_boot: Annotated[int, Field(ge=0)] = 1000


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
    evaluation: MitigationEvaluation = Field(default_factory=MitigationEvaluation)


class BenchmarkMitigation(MitigationSettings):
    """How the benchmark mitigates each valid setting (the method knobs of :class:`MitigationSettings`).

    Every method starts from the weights stage 1 started from (``finetune.checkpoint`` of the
    benchmark; ``None``: the backbone's own initialisation) and trains with the stage-1 recipe, the
    same seed and the same number of epochs: the paper's protocol ("same seed, same budget").
    ``standard`` under that protocol *is* the stage-1 model, so it is not trained twice.
    """

    #: Methods to compare (``method`` of the settings is ignored); RaVL first by convention. Default: every
    #: method but the oracles (which read ground truth).
    methods: list[MitigationMethod] = Field(
        default_factory=lambda: [name for name, spec in MITIGATION_METHODS.items() if not spec.oracle], min_length=1)
    #: Texts naming the spurious attribute for ``spurious_aware``, with ``{}`` for the artefact's
    #: name in words (``chest_drain`` -> ``chest drain``).
    spurious_template: str = "a chest x-ray with a {}."
    #: Also mitigate *invalid* settings (the stage-1 model did not learn the shortcut): what each method
    #: does to a model that has none (do no harm), reported apart from the valid settings' tables
    #: (``mitigation_invalid``, ``differences_invalid``). Costs the methods' training again per invalid setting.
    on_invalid: bool = False

    _distinct_methods = field_validator("methods")(classmethod(lambda cls, v: _distinct(v, "methods")))


class BenchmarkConfig(StrictModel):
    """End-to-end runs over phantom settings (``ravl-med benchmark``, ``ravl-med demo``).

    Per setting: write the phantom DICOMs, fine-tune stage 1 (``finetune`` recipe), judge validity
    (did the model learn the shortcut?), audit (``audit``: RaVL and the discovery baselines,
    Precision@k), then, for valid settings (and invalid ones with ``mitigation.on_invalid``), every
    mitigation method and its evaluation on the test split. The model, the prompts and the ingestion (with the candidate regions) are named once, at
    the top, and used by every stage of a setting; the manifest, classes and seed come from the setting.
    """

    #: Phantom suite: a name in ``datasets/phantom`` or a YAML path.
    suite: str
    #: Setting names (or shell patterns such as ``*-v0.90-*``) of the suite to run (``None``: all);
    #: they run in suite order.
    settings: list[str] | None = None
    #: The backbone and the weights stage 1 (and every mitigation method) starts from.
    model: ModelSource = Field(default_factory=ModelSource)
    #: Zero-shot prompt templates with one ``{}``; ``None``: ``CXR_TEMPLATES``.
    templates: list[str] | None = None
    #: Ingestion of every stage, including the candidate regions of the audit and of mitigation.
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    finetune: FinetuneRecipe = Field(default_factory=FinetuneRecipe)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    mitigation: BenchmarkMitigation = Field(default_factory=BenchmarkMitigation)
    #: Validity: acc(spurious class | feature) - acc(spurious class | no feature) on the test split
    #: of the stage-1 model must reach this (``evaluate.groups.shortcut_learned``); -1 keeps every setting.
    min_shortcut_gap: Annotated[float, Field(ge=-1, le=1)] = 0.2
    #: Bootstrap resamples for the per-group confidence intervals of the stage-2 tables.
    n_boot: Annotated[int, Field(ge=0)] = 1000
    output_dir: Path = Path("runs/benchmark")

    _one_slot = field_validator("templates")(classmethod(lambda cls, v: DataSource._one_slot(v)))

    def finetune_config(self, setting, manifest: Path, output_dir: Path) -> FinetuneConfig:
        """The stage-1 fine-tuning config of ``setting`` (a :class:`~ravl_med.phantom.PhantomSetting`
        written to ``manifest``)."""
        return FinetuneConfig(**self.finetune.model_dump(), **self._sources(setting, manifest), output_dir=output_dir)

    def audit_config(self, setting, manifest: Path, output_dir: Path, checkpoint: Path,
                     sha256: str | None) -> AuditConfig:
        """The audit config of ``setting``'s stage-1 model (``checkpoint``)."""
        sources = self._sources(setting, manifest) | {"checkpoint": checkpoint, "sha256": sha256}
        return AuditConfig(**self.audit.model_dump(), **sources, output_dir=output_dir)

    def _sources(self, setting, manifest: Path) -> dict[str, Any]:
        return {**self.model.model_dump(), "manifest": manifest, "classes": list(setting.classes),
                "templates": self.templates, "ingest": self.ingest.model_dump(), "seed": setting.seed}
