"""Counterfactual swaps of the audit's spurious regions (ravl_med.mitigate.counterfactual), on small fake data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ravl_med.data.dataset import collate
from ravl_med.mitigate.counterfactual import CounterfactualDataset, box_mask, decorrelating_plan

SIZE = 12
BOXES = torch.tensor([[0.0, 0.0, 6.0, 6.0], [6.0, 0.0, 12.0, 6.0], [0.0, 6.0, 6.0, 12.0], [6.0, 6.0, 12.0, 12.0]])


class FakeTrainSet:
    """What CounterfactualDataset reads of a RadiographDataset: labels, keys, loaded(i), items."""

    def __init__(self, labels, seed=0):
        self._labels = torch.as_tensor(labels, dtype=torch.int64)
        rng = np.random.default_rng(seed)
        # Image i is filled with the value i + 1 (plus noise): every pixel says where it came from.
        self.images = [torch.full((1, SIZE, SIZE), float(i + 1)) + torch.as_tensor(rng.uniform(0, 0.1, (1, SIZE, SIZE)),
                                                                                  dtype=torch.float32)
                       for i in range(len(labels))]

    @property
    def labels(self):
        return self._labels

    @property
    def keys(self):
        return [f"k{i}" for i in range(len(self._labels))]

    def __len__(self):
        return len(self._labels)

    def loaded(self, index):
        return {"image": self.images[index], "regions": BOXES.clone()}

    def __getitem__(self, index):
        return {"image": self.images[index], "regions": BOXES.clone(), "label": int(self._labels[index]),
                "key": f"k{index}", "text": "t"}


def _setting(n_per_class=40, shares=(0.9, 0.1), seed=0):
    """Two classes; class 0's images mostly carry the feature in the top-left box, class 1's rarely."""
    rng = np.random.default_rng(seed)
    labels, carriers = [], []
    for k, share in enumerate(shares):
        labels += [k] * n_per_class
        carriers += list(rng.random(n_per_class) < share)
    flags = {f"k{i}": np.array([c, False, False, False]) for i, c in enumerate(carriers)}
    return FakeTrainSet(labels, seed), flags, np.array(carriers)


def test_plan_gives_every_class_the_overall_share():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 4, 500)
    carriers = rng.random(500) < np.array([0.05, 0.8, 0.3, 0.5, 0.2])[labels + 1]
    plan = decorrelating_plan(labels, carriers, 4)
    overall = carriers[labels >= 0].mean()
    assert np.allclose(plan.expected_shares(labels), overall)
    assert (plan.remove_prob >= 0).all() and (plan.remove_prob <= 1).all() and (plan.paste_prob <= 1).all()
    assert plan.remove_prob[0] > 0 and plan.paste_prob[0] == 0  # class 0 (30%) is above the overall share
    with pytest.raises(ValueError, match="with and without"):
        decorrelating_plan([0, 1], [True, True], 2)
    with pytest.raises(ValueError, match="with and without"):
        decorrelating_plan([0, 1, -1], [False, False, True], 2)  # the only carrier has no label



def test_paste_only_plan_removes_nothing_and_takes_donors_outside_the_tied_class():
    rng = np.random.default_rng(2)
    labels = rng.integers(-1, 4, 600)
    carriers = rng.random(600) < np.array([0.5, 0.9, 0.05, 0.1, 0.2])[labels + 1]
    plan = decorrelating_plan(labels, carriers, 4, remove=False)
    known = labels >= 0
    shares = np.array([carriers[labels == k].mean() for k in range(4)])
    assert not plan.remove_prob.any() and plan.paste_prob[0] == 0  # class 0 (90%) is never changed
    assert np.allclose(plan.expected_shares(labels), shares.max())  # every class at the largest share
    overall = carriers[known].mean()
    assert np.array_equal(plan.donors, carriers & known & (shares <= overall)[labels.clip(0)])
    assert not plan.donors[labels == 0].any() and plan.donors.any()
    assert np.array_equal(decorrelating_plan(labels, carriers, 4).donors, carriers)  # remove and paste: all carriers
    with pytest.raises(ValueError, match="outside the class"):  # every carrier in the tied class: no donor
        decorrelating_plan([0, 0, 1, 1], [True, True, False, False], 2, remove=False)


def test_paste_only_swaps_never_cut_an_image_nor_paste_from_the_tied_class():
    base, flags, carriers = _setting(shares=(0.9, 0.2))
    data = CounterfactualDataset(base, flags, n_classes=2, seed=0, remove=False)
    labels = base.labels.numpy()
    pasted = 0
    for epoch in range(5):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            changed = ~torch.isclose(item["image"][0], base.images[i][0])
            if not changed.any():
                continue
            assert not carriers[i] and labels[i] == 1  # only class 1's non-carriers receive
            source = round(float(item["image"][0][0, 0]) - 1)
            assert carriers[source] and labels[source] == 1  # from a carrier of class 1, never of class 0
            pasted += 1
    assert pasted > 0

def test_box_mask_rounds_outwards():
    mask = box_mask(torch.tensor([[1.5, 2.0, 3.2, 4.0]]), 6, 6)
    assert mask.sum() == 3 * 2 and mask[2:4, 1:4].all() and mask.dtype == torch.float32


def test_swaps_move_the_boxes_pixels_and_relabel_the_regions():
    base, flags, carriers = _setting()
    data = CounterfactualDataset(base, flags, n_classes=2, seed=0)
    pasted = removed = 0
    for epoch in range(5):
        data.set_epoch(epoch)
        for i in range(len(data)):
            item = data[i]
            image, own = item["image"][0], base.images[i][0]
            changed = ~torch.isclose(image, own)
            assert not changed[:, 6:].any() and not changed[6:, :].any()  # only the top-left box ever changes
            if not changed.any():
                assert item["spurious"].tolist() == flags[f"k{i}"].tolist()
                continue
            source = round(float(image[0, 0]) - 1)  # the value says which image the box came from
            assert torch.equal(image[:6, :6], base.images[source][0][:6, :6])
            if carriers[i]:  # removed: filled from a non-carrier, no spurious region left
                removed += 1
                assert not carriers[source] and not item["spurious"].any()
            else:  # pasted from a carrier, whose box is now spurious here too
                pasted += 1
                assert carriers[source] and item["spurious"].tolist() == [True, False, False, False]
    assert removed > 0 and pasted > 0


def test_swaps_decorrelate_the_feature_from_the_class():
    base, flags, _ = _setting(n_per_class=60)
    data = CounterfactualDataset(base, flags, n_classes=2, seed=3)
    shares = np.zeros((20, 2))
    for epoch in range(20):
        data.set_epoch(epoch)
        batch = collate([data[i] for i in range(len(data))])
        carries = np.array([bool(s.any()) for s in batch["spurious"]])
        shares[epoch] = [carries[batch["label"].numpy() == k].mean() for k in (0, 1)]
    before = [np.mean([flags[f"k{i}"][0] for i in range(len(data)) if base.labels[i] == k]) for k in (0, 1)]
    assert before[0] - before[1] > 0.6
    assert abs(shares[:, 0].mean() - shares[:, 1].mean()) < 0.08  # the same share in both classes, in expectation


def test_items_depend_on_seed_epoch_and_index_only():
    base, flags, _ = _setting()
    one, two = CounterfactualDataset(base, flags, 2, seed=0), CounterfactualDataset(base, flags, 2, seed=0)
    order = list(range(len(base)))
    one.set_epoch(2)
    two.set_epoch(2)
    first = [one[i]["image"] for i in order]
    second = [two[i]["image"] for i in reversed(order)][::-1]  # another order: the same images
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    two.set_epoch(3)
    assert not all(torch.equal(a, two[i]["image"]) for i, a in zip(order, first))


def test_oracle_swaps_the_masks_pixels_only():
    base, flags, carriers = _setting()
    masks = []
    for c in carriers:
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        if c:
            mask[2, 1:5] = True  # a thin feature inside the top-left box
        masks.append(mask)
    data = CounterfactualDataset(base, {}, n_classes=2, seed=0, masks=masks)
    assert np.array_equal(data.plan.carriers, carriers)
    changed_any = False
    for i in range(len(data)):
        changed = ~torch.isclose(data[i]["image"][0], base.images[i][0])
        outside = np.ones((SIZE, SIZE), dtype=bool)
        outside[2, 1:5] = False
        assert not changed[torch.as_tensor(outside)].any()
        changed_any |= bool(changed.any())
    assert changed_any
