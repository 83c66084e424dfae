"""Counterfactual training images: the audit's spurious regions moved across classes, in the data pipeline.

Stage-1 region labels (the audit's medoids, :mod:`ravl_med.mitigate.regions`) say which regions of each
training image are spurious; an image is a *carrier* when it has at least one. The feature is tied to a
class when carriers are more frequent there. Let ``f_k`` be the carrier share of class k and ``f`` the
share over all labelled images. :class:`CounterfactualSwapd` then, for each drawn training image:

* a carrier of a class with ``f_k > f`` has, with probability ``(f_k - f) / f_k``, its spurious boxes
  filled with the same boxes of a random non-carrier (the feature removed);
* a non-carrier of a class with ``f_k < f`` receives, with probability ``(f - f_k) / (1 - f_k)``, the
  spurious boxes of a random carrier, pixel for pixel at the same place (the feature pasted).

In expectation every class then has carrier share ``f``: the feature no longer predicts the class. No
hyperparameter: the probabilities follow from the labels (:func:`decorrelating_plan`). The texts are
unchanged (the pasted or removed feature is not the finding the report describes).

**Paste only** (``remove=False``): boxes are a coarse unit. When the feature sits where the tied class's
finding is (a chest drain over a pneumothorax), a carrier of the tied class has the finding inside its
spurious boxes too: removing them erases the finding from an image still labelled with it, and pasting
them carries the finding into images labelled otherwise (measured: ``benchmarks/counterfactual_overlap.py``).
The paste-only plan therefore never cuts an image and takes the pasted boxes only from carriers of the
classes where the feature is no more frequent than overall (the *donors*); every other class's
non-carriers receive the feature with probability ``(f_max - f_k) / (1 - f_k)``, so that in expectation
every class has the carrier share ``f_max`` of the class the feature is most frequent in.

The ``oracle`` variant swaps the pixels of the ground-truth artefact masks instead of boxes, with carriers
taken from the masks: it reads ground truth, so it is a ceiling for the method, never a method.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Randomizable
from torch.utils.data import Dataset
from torchvision.ops import box_iou

__all__ = ["CounterfactualDataset", "CounterfactualSwapd", "SwapPlan", "box_mask", "decorrelating_plan"]

#: A pasted box marks a region of the receiving image spurious from this IoU on (stage-1 boxes differ
#: slightly between images when regions are clipped to each image's content).
PASTED_IOU = 0.5


@dataclass(frozen=True)
class SwapPlan:
    """Who carries the feature and how often each class's images are changed.

    Attributes:
        carriers: (N,) bool per dataset row.
        donors: (N,) bool, the rows whose spurious boxes may be pasted into another image.
        remove_prob: (C,) probability that a carrier of class k has its feature removed.
        paste_prob: (C,) probability that a non-carrier of class k receives a carrier's feature.
    """

    carriers: np.ndarray
    donors: np.ndarray
    remove_prob: np.ndarray
    paste_prob: np.ndarray

    def expected_shares(self, labels: np.ndarray) -> np.ndarray:
        """(C,) expected carrier share per class after the swaps (the plan's check: all equal)."""
        labels = np.asarray(labels)
        shares = np.zeros(len(self.remove_prob))
        for k in range(len(shares)):
            own = self.carriers[labels == k]
            if len(own):
                f = own.mean()
                shares[k] = f * (1 - self.remove_prob[k]) + (1 - f) * self.paste_prob[k]
        return shares


def decorrelating_plan(labels: Sequence[int] | np.ndarray, carriers: Sequence[bool] | np.ndarray,
                       n_classes: int, remove: bool = True) -> SwapPlan:
    """The swap probabilities that give every class the same carrier share (module docstring).

    Args:
        labels: (N,) class index per row (< 0: unknown, never changed, left out of the shares).
        carriers: (N,) bool, the row carries the feature.
        n_classes: C.
        remove: ``True``: remove and paste towards the overall share, every carrier a donor; ``False``:
            paste only, towards the largest class share, from donors of classes at or below the overall share.

    Raises:
        ValueError: mismatched lengths, no carrier or no non-carrier among the labelled rows (nothing to swap),
            or paste only without a donor (every carrier in a class where the feature is over-represented).
    """
    labels, carriers = np.asarray(labels, dtype=np.int64), np.asarray(carriers, dtype=bool)
    if labels.shape != carriers.shape:
        raise ValueError(f"labels {labels.shape} and carriers {carriers.shape} differ in length")
    known = labels >= 0
    if not carriers[known].any() or carriers[known].all():
        raise ValueError("counterfactual swaps need images with and without the audit's spurious regions; "
                         f"{int(carriers[known].sum())} of {int(known.sum())} labelled training images carry them")
    overall = carriers[known].mean()
    shares = np.array([carriers[labels == k].mean() if (labels == k).any() else np.nan for k in range(n_classes)])
    removal, paste = np.zeros(n_classes), np.zeros(n_classes)
    if remove:
        over, under = shares > overall, shares < overall
        removal[over] = (shares[over] - overall) / shares[over]
        paste[under] = (overall - shares[under]) / (1 - shares[under])
        return SwapPlan(carriers=carriers, donors=carriers, remove_prob=removal, paste_prob=paste)
    target = np.nanmax(shares)
    under = shares < target
    paste[under] = (target - shares[under]) / (1 - shares[under])
    donors = carriers & np.isin(labels, np.flatnonzero(shares <= overall))  # nan (empty class) compares False
    if not donors.any():
        tied = [k for k in range(n_classes) if shares[k] > overall]
        raise ValueError(f"paste-only swaps need images carrying the audit's spurious regions outside the class(es) "
                         f"the feature is tied to ({tied}); all {int(carriers[known].sum())} carriers are in them")
    return SwapPlan(carriers=carriers, donors=donors, remove_prob=removal, paste_prob=paste)


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) float32 union of ``boxes`` ((R, 4) x0, y0, x1, y1 in pixels; fractional edges rounded outwards)."""
    mask = torch.zeros(height, width)
    for x0, y0, x1, y1 in boxes.tolist():
        mask[max(int(np.floor(y0)), 0):int(np.ceil(y1)), max(int(np.floor(x0)), 0):int(np.ceil(x1))] = 1.0
    return mask


def _bounding_box(mask: torch.Tensor) -> torch.Tensor:
    """(1, 4) x0, y0, x1, y1 (exclusive ends) of a non-empty (H, W) mask's pixels."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)


class CounterfactualSwapd(Randomizable, MapTransform):
    """Removes or pastes the feature of one training item (module docstring), as a MONAI dictionary transform.

    The item holds ``image`` (1, S, S), ``regions`` (R, 4), ``spurious`` (R,) bool, ``label`` and ``index``
    (its dataset row); ``image`` and ``spurious`` are replaced when a swap happens.

    Args:
        plan: the :class:`SwapPlan`.
        image_of: row -> (1, S, S) image tensor (the other images a swap reads).
        feature_of: row -> ((S, S) float mask of the feature's pixels, (P, 4) boxes it covers), for carriers.
        keys: the image key.
    """

    def __init__(self, plan: SwapPlan, image_of: Callable[[int], torch.Tensor],
                 feature_of: Callable[[int], tuple[torch.Tensor, torch.Tensor]], keys: Sequence[str] = ("image",)) -> None:
        MapTransform.__init__(self, keys)
        self.plan, self.image_of, self.feature_of = plan, image_of, feature_of
        self.donor_rows = np.flatnonzero(plan.donors)
        self.clean_rows = np.flatnonzero(~plan.carriers)

    def randomize(self, data: Any = None) -> None:
        """Draws the swap decision and the other image (uniform in [0, 1), then a row)."""
        self._u = self.R.random_sample()
        self._other = self.R.random_sample()

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        self.randomize()
        d = dict(data)
        row, label = int(d["index"]), int(d["label"])
        if label < 0:
            return d
        carrier = bool(self.plan.carriers[row])
        # A carrier takes a non-carrier's pixels under its own feature (removed); a non-carrier takes a carrier's
        # pixels under the carrier's feature (pasted).
        probability, pool = (self.plan.remove_prob, self.clean_rows) if carrier else (self.plan.paste_prob, self.donor_rows)
        if self._u >= probability[label]:
            return d
        other = int(pool[int(self._other * len(pool))])
        mask, boxes = self.feature_of(row if carrier else other)
        for key in self.key_iterator(d):
            d[key] = d[key] * (1 - mask) + self.image_of(other) * mask
        if carrier:
            d["spurious"] = torch.zeros_like(d["spurious"])
        elif len(boxes) and len(d["regions"]) == len(d["spurious"]) > 0:
            d["spurious"] = d["spurious"] | (box_iou(d["regions"], boxes).amax(dim=1) >= PASTED_IOU)
        return d


class CounterfactualDataset(Dataset):
    """A training dataset whose items go through :class:`CounterfactualSwapd` with per-item seeds.

    Item i of epoch e draws from seed ``(seed, e, i)``, so the images do not depend on workers, order or
    resumption. Items gain ``spurious`` ((R_i,) bool, the region labels after the swap).

    Args:
        base: the :class:`~ravl_med.data.dataset.RadiographDataset` (train split; cache it: swaps read
            other rows).
        region_labels: image key -> (R_i,) bool stage-1 spurious flags.
        n_classes: C.
        seed: the run's seed.
        masks: oracle only: (N,) ground-truth artefact masks ((S, S) bool or ``None``) per row; carriers are
            then the rows with a non-empty mask and the swaps move those pixels.
        remove: ``False``: paste only (:func:`decorrelating_plan`).
    """

    def __init__(self, base, region_labels: Mapping[str, np.ndarray], n_classes: int, seed: int,
                 masks: Sequence[np.ndarray | None] | None = None, remove: bool = True) -> None:
        self.base, self.seed, self.epoch = base, int(seed), 0
        self.flags = [np.asarray(region_labels.get(str(k), np.zeros(0, dtype=bool)), dtype=bool) for k in base.keys]
        self.masks = None if masks is None else [None if m is None or not m.any() else torch.as_tensor(m, dtype=torch.float32)
                                                 for m in masks]
        self.mask_boxes = None if self.masks is None else [None if m is None else _bounding_box(m) for m in self.masks]
        carriers = (np.array([m is not None for m in self.masks]) if self.masks is not None
                    else np.array([f.any() for f in self.flags], dtype=bool))
        self.plan = decorrelating_plan(base.labels.numpy(), carriers, n_classes, remove=remove)
        self.swap = CounterfactualSwapd(self.plan, self._image, self._feature)

    @property
    def labels(self) -> torch.Tensor:
        return self.base.labels

    @property
    def keys(self) -> list[str]:
        return self.base.keys

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        """Items of this epoch draw from seeds of ``epoch``."""
        self.epoch = int(epoch)

    def _image(self, row: int) -> torch.Tensor:
        return self.base.loaded(row)["image"]

    def _feature(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._image(row)
        if self.masks is not None:
            return self.masks[row], self.mask_boxes[row]
        boxes = self.base.loaded(row)["regions"][torch.as_tensor(self.flags[row])]
        return box_mask(boxes, *image.shape[-2:]), boxes

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        item["spurious"] = torch.as_tensor(self.flags[index])
        item["index"] = index
        self.swap.set_random_state(seed=int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0]))
        item = self.swap(item)
        del item["index"]
        return item
