"""The stage runners: the one place that reads a stage's config, runs the library layers and writes its files.

Each runner returns a frozen result dataclass (``to_json()`` gives what it wrote as JSON) and writes
the same files whoever calls it; the CLI and the benchmark are thin callers, and tracking observes
the results (:mod:`ravl_med.tracking.observe`).

| stage | runner | result |
|---|---|---|
| fine-tuning | :func:`~ravl_med.stages.finetune.run_finetune` | :class:`~ravl_med.models.training.FitResult` |
| audit (RaVL discovery) | :func:`~ravl_med.stages.audit.run_audit` | :class:`~ravl_med.stages.audit.AuditResult` |
| review (which clusters are shortcuts; no torch) | :func:`~ravl_med.stages.review.run_review` | :class:`~ravl_med.stages.review.Review` |
| mitigation (+ its evaluation) | :func:`~ravl_med.stages.mitigate.run_mitigation` | :class:`~ravl_med.stages.mitigate.MitigationResult` |
| evaluation | :func:`~ravl_med.stages.evaluate.run_evaluation` | :class:`~ravl_med.stages.evaluate.EvaluationResult` |
| benchmark / demo | :func:`~ravl_med.stages.benchmark.run_benchmark` | :class:`~ravl_med.stages.benchmark.SettingResult` |

Configs: :mod:`ravl_med.stages.config`. Import the runner modules directly (they import torch).
"""
