"""What every discoverer shares: the ``fit`` inputs, the ranked output and its JSON form."""

from __future__ import annotations

import inspect
import time
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ValidationError
from sklearn.base import BaseEstimator

from ._groups import (
    RankedCluster,
    _clean,
    class_table,
    group_statistics,
    one_per_image_first,
    refuse_non_finite,
    validate_inputs,
)

__all__ = ["BaseDiscoverer", "scores_from_embeddings"]

#: The legitimate outcomes of an audit (``outcome_``).
OUTCOMES = ("found", "no_structure", "no_candidate", "no_influential", "not_significant", "unstable",
            "too_few_regions", "no_selection")


def scores_from_embeddings(embeddings, text_embeddings, temperature: float = 0.07,
                           block_rows: int = 65536) -> np.ndarray:
    """Zero-shot probabilities p(q | x) with :func:`ravl_med.models.zeroshot.zero_shot_scores`, blocked.

    Args:
        embeddings: (N, D) image or region embeddings (numpy or torch).
        text_embeddings: (C, D) class text embeddings t_q.
        temperature: T > 0.
        block_rows: rows per call (bounds memory at 10^6 regions).

    Returns:
        (N, C) float32 probabilities.
    """
    import torch

    from ravl_med.models.zeroshot import zero_shot_scores

    text = torch.as_tensor(np.asarray(text_embeddings, dtype=np.float32))
    embeddings = np.asarray(embeddings, dtype=np.float32)
    out = np.empty((embeddings.shape[0], text.shape[0]), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, embeddings.shape[0], block_rows):
            block = torch.from_numpy(np.ascontiguousarray(embeddings[start:start + block_rows]))
            out[start:start + block_rows] = zero_shot_scores(block, text, temperature).numpy()
    return out


class BaseDiscoverer(BaseEstimator):
    """Common ``fit`` contract and outputs, a scikit-learn estimator.

    Parameters are keyword-only ``__init__`` arguments stored unchanged (``get_params``,
    ``set_params`` and ``clone`` come from :class:`sklearn.base.BaseEstimator`); ``fit`` checks them
    first with the class's ``_parameter_model`` (types and bounds) and refuses bad ones with a
    one-line ValueError naming the parameter.

    Learned attributes after ``fit``: ``ranked_clusters_`` (list of
    :class:`~ravl_med.discover.RankedCluster`), ``ranked_regions_`` (list of (n_c,) int64 region
    indices, one per ranked cluster, best first), ``outcome_`` (one of ``OUTCOMES``), ``notes_``
    (list of str), ``n_classes_``, ``fit_time_`` (seconds).
    """

    #: The constructor parameters' types and bounds: one field per parameter (extra keys forbidden).
    _parameter_model: ClassVar[type[BaseModel]]

    #: Regions listed per cluster in ``RankedCluster.top_regions`` (the gallery's source).
    _n_top_regions_attr = "n_top_regions"

    # -- shared helpers -------------------------------------------------------------------------

    def _check_parameters(self) -> None:
        """Validates ``get_params()`` with ``_parameter_model``; ValueError (one line) when a value is refused.

        The parameters are checked, not converted: ``fit`` uses them as stored.
        """
        params = self.get_params(deep=False)
        try:
            self._parameter_model.model_validate(params)
        except ValidationError as err:
            problems: dict[tuple[str, str], list[str]] = {}  # (parameter, tuple index) -> messages
            for error in err.errors():
                name = str(error["loc"][0])
                index = "".join(f"[{p}]" for p in error["loc"][1:] if isinstance(p, int))
                # A union type reports one message per member at the same place: they read "or".
                problems.setdefault((name, index), []).append(error["msg"].removeprefix("Value error, "))
            raise ValueError(f"{type(self).__name__}: " + "; ".join(
                f"{name}{index}: {' or '.join(messages)} (got {params.get(name)!r})"
                for (name, index), messages in problems.items())) from None

    def _start(self, region_embeddings, region_image, image_labels, image_scores, region_scores, class_names):
        self._check_parameters()
        self._t0 = time.perf_counter()
        n_regions = int(np.shape(region_embeddings)[0])
        refuse_non_finite(region_embeddings, "region_embeddings")
        inputs = validate_inputs(n_regions, region_image, image_labels, image_scores, region_scores, class_names)
        self.n_classes_ = inputs.n_classes
        self.class_names_ = list(inputs.class_names)
        self.notes_ = list(inputs.notes)
        self.ranked_clusters_ = []
        self.ranked_regions_ = []
        self.outcome_ = "no_candidate"
        return inputs

    def _finish(self):
        self.fit_time_ = time.perf_counter() - self._t0
        del self._t0
        return self

    def _ranked(self, region_group: np.ndarray, order: list[int], scores: np.ndarray, ranked_regions: list,
                inputs, medoids: np.ndarray | None = None, stats=None) -> None:
        """Fill ``ranked_clusters_`` / ``ranked_regions_`` for the groups in ``order``.

        Each group's regions (``ranked_regions``, best first) are reordered so that every image's best
        region comes before any image's second (:func:`one_per_image_first`): overlapping boxes of one
        image cannot fill the top of a ranking, for every method alike.
        """
        n_groups = len(ranked_regions) if medoids is None else medoids.size
        if stats is None:
            stats = group_statistics(region_group, n_groups, inputs)
        rng = np.random.default_rng(getattr(self, "random_state", 0))
        n_top = int(getattr(self, self._n_top_regions_attr, 25))
        self.ranked_clusters_ = []
        self.ranked_regions_ = []
        for rank, group in enumerate(order, start=1):
            regions = one_per_image_first(np.asarray(ranked_regions[group], dtype=np.int64), inputs.region_image)
            attribute = int(stats.attribute[group])
            self.ranked_clusters_.append(RankedCluster(
                rank=rank, cluster=int(group), score=float(scores[group]), gap_score=float(stats.gap_score[group]),
                influence=float(stats.group_influence[group]),
                attribute=attribute if attribute >= 0 else None,
                attribute_name=inputs.class_names[attribute] if attribute >= 0 else None,
                n_regions=int(stats.n_regions[group]), n_images=int(stats.n_images[group]),
                medoid=None if medoids is None else int(medoids[group]),
                table=class_table(stats, group, inputs, int(getattr(self, "n_boot", 1000)), rng),
                top_regions=[int(r) for r in regions[:n_top]]))
            self.ranked_regions_.append(regions)

    # -- public ---------------------------------------------------------------------------------

    def top_ranked_regions(self, k: int | None = None) -> np.ndarray:
        """Region indices of the top-ranked cluster (the first ``k``), empty when nothing was kept."""
        if not self.ranked_regions_:
            return np.zeros(0, dtype=np.int64)
        regions = self.ranked_regions_[0]
        return regions if k is None else regions[:k]

    def to_dict(self) -> dict:
        """JSON-serialisable summary: parameters, outcome, notes, every ranked cluster with its table.

        Holds region and image *indices* only (no paths, no patient identifiers).
        """
        # In signature order (scikit-learn's get_params sorts the names).
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        params = {name: getattr(self, name) for name in names}
        out = {
            "method": type(self).__name__,
            "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
            "outcome": self.outcome_,
            "notes": list(self.notes_),
            "n_classes": self.n_classes_,
            "class_names": list(self.class_names_),
            "fit_time_s": getattr(self, "fit_time_", None),
            "ranked_clusters": [c.to_dict() for c in self.ranked_clusters_],
        }
        out.update(self._extra_dict())
        return _clean(out)

    def _extra_dict(self) -> dict:
        return {}
