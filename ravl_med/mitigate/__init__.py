"""RaVL stage 2: region-aware fine-tuning and the mitigation baselines.

* :mod:`.losses`: :class:`RegionAwareLoss` (L_CLIP, L_R, L_A), open_clip call style.
* :mod:`.regions`: nearest-medoid labelling of training regions (the stage-1 medoids,
  :class:`Stage1Medoids` in ``medoids.npz``, come from :mod:`ravl_med.discover.medoids`).
* :mod:`.registry`: the method names and what each needs (no torch: the CLI reads it for ``--help``).
* :mod:`.methods`: objectives and samplers of ``ravl``, ``standard``, ``upsampled``, ``vl_erm``,
  ``vl_gdro``, ``spurious_aware`` for :class:`~ravl_med.models.training.Trainer`.

Import from the submodules. Running a method end to end (labelling, training, evaluation, files) is the mitigation stage,
:func:`ravl_med.stages.mitigate.run_mitigation`.
"""
