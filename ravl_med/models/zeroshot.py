"""Zero-shot classification from class names and prompt templates (RaVL stage 1, step 1).

For each class q: encode every template filled with the class name, L2-normalise each, average,
L2-normalise again -> t_q. Scores p(q | x) = softmax_q(<e_x, t_q> / T), T = 0.07 by default. The
same scoring applies to image embeddings and to region embeddings
(:class:`~ravl_med.models.regions.RegionEmbedder`).

:func:`zero_shot_predictions` and :func:`evaluate_zero_shot` run a whole
:class:`~ravl_med.data.dataset.RadiographDataset` through a model (the fine-tuning loop's
validation, the stage-2 evaluation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ravl_med.data.dataset import RadiographDataset, collate
from ravl_med.evaluate.groups import GroupAccuracy

__all__ = [
    "CXR_TEMPLATES",
    "DEFAULT_TEMPERATURE",
    "class_prompts",
    "class_text_embeddings",
    "embed_class_prompts",
    "evaluate_zero_shot",
    "zero_shot_logits",
    "zero_shot_predictions",
    "zero_shot_scores",
]

DEFAULT_TEMPERATURE = 0.07

#: Prompt templates for frontal chest radiographs; ``{}`` is replaced by the class name.
CXR_TEMPLATES: tuple[str, ...] = (
    "a chest x-ray showing {}.",
    "{} on a frontal chest radiograph.",
    "a frontal chest x-ray with {}.",
    "findings consistent with {}.",
    "a radiograph of the chest demonstrating {}.",
    "chest x-ray: {}.",
)

Template = str | Callable[[str], str]


def _fill(template: Template, name: str) -> str:
    return template(name) if callable(template) else template.format(name)


def class_text_embeddings(
    model,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classes: Sequence[str],
    templates: Sequence[Template] = CXR_TEMPLATES,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class embeddings t_q: mean of L2-normalised template embeddings, renormalised.

    Gradients flow when called outside ``torch.no_grad()`` (mitigation fine-tunes the text tower).

    Args:
        model: anything with ``encode_text(tokens) -> (n, D)`` (an open_clip ``CLIP``).
        tokenizer: strings -> (n, L) token ids.
        classes: C class names.
        templates: T format strings with one ``{}``, or callables name -> prompt.
        device: where the tokens go; default the model's parameters' device.

    Returns:
        (C, D) float tensor, unit rows.
    """
    if not classes or not templates:
        raise ValueError("class_text_embeddings needs at least one class and one template")
    if device is None:
        device = next(model.parameters()).device
    return embed_class_prompts(model, tokenizer(class_prompts(classes, templates)).to(device), len(classes))


def class_prompts(classes: Sequence[str], templates: Sequence[Template] = CXR_TEMPLATES) -> list[str]:
    """The C * T prompts of :func:`class_text_embeddings`, class by class (templates inner)."""
    return [_fill(template, name) for name in classes for template in templates]


def embed_class_prompts(model, tokens: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, D) unit class embeddings from the tokens of :func:`class_prompts` (C * T rows, class by class).

    Each prompt embedding is L2-normalised, the T of a class averaged, the mean renormalised.
    """
    embeddings = F.normalize(model.encode_text(tokens).float(), dim=-1)
    embeddings = embeddings.view(n_classes, -1, embeddings.shape[-1]).mean(dim=1)
    return F.normalize(embeddings, dim=-1)


def zero_shot_logits(
    embeddings: torch.Tensor, text: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """Cosine similarities over temperature.

    Args:
        embeddings: (N, D) image or region embeddings (normalised here).
        text: (C, D) class embeddings (normalised here).
        temperature: T > 0.

    Returns:
        (N, C) logits <e, t> / T.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if embeddings.shape[-1] != text.shape[-1]:
        raise ValueError(f"dimension mismatch: embeddings {tuple(embeddings.shape)} vs text {tuple(text.shape)}")
    return F.normalize(embeddings.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T / temperature


def zero_shot_scores(
    embeddings: torch.Tensor, text: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """Zero-shot class probabilities p(q | x) = softmax_q(<e_x, t_q> / T).

    Args:
        embeddings: (N, D) image or region embeddings.
        text: (C, D) class embeddings from :func:`class_text_embeddings`.
        temperature: T > 0, default 0.07.

    Returns:
        (N, C) probabilities, rows summing to 1; predicted class = ``argmax(dim=1)``.
    """
    return zero_shot_logits(embeddings, text, temperature).softmax(dim=-1)


@torch.no_grad()
def zero_shot_predictions(
    model: nn.Module,
    preprocess: nn.Module,
    text_embeddings: torch.Tensor,
    dataset: RadiographDataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[np.ndarray, np.ndarray]:
    """Zero-shot class of every image of ``dataset``: argmax of its cosine with each class text.

    Args:
        model: an open_clip-style model with ``encode_image``.
        preprocess: (B, 1, S, S) [0, 1] -> the image tower's input.
        text_embeddings: (C, D) L2-normalised class text embeddings
            (:func:`class_text_embeddings`).
        dataset: a :class:`RadiographDataset`.
        device: where to compute.
        batch_size: images per forward pass.
        autocast: context manager factory around the forward passes.

    Returns:
        (labels, predictions): (N,) int64 each; labels are -1 for rows outside the classes.
    """
    was_training = model.training
    model.eval()
    text = text_embeddings.float().to(device)
    labels, predicted = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
            with autocast():
                features = model.encode_image(preprocess(batch["image"].to(device)), normalize=True)
            predicted.append((features.float() @ text.T).argmax(dim=1).cpu().numpy())
            labels.append(batch["label"].numpy())
    finally:
        model.train(was_training)
    return np.concatenate(labels), np.concatenate(predicted)


def evaluate_zero_shot(
    model: nn.Module,
    preprocess: nn.Module,
    tokenizer: Callable[[list[str]], torch.Tensor],
    dataset: RadiographDataset,
    classes: list[str] | tuple[str, ...],
    templates=CXR_TEMPLATES,
    *,
    feature_present: np.ndarray | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[float, pd.DataFrame | None]:
    """Zero-shot top-1 accuracy of ``model`` on ``dataset`` (rows with label -1 are not counted).

    Args:
        model: an open_clip-style model with ``encode_image``/``encode_text``.
        preprocess: (B, 1, S, S) [0, 1] -> the image tower's input.
        tokenizer: strings -> token ids.
        dataset: a :class:`RadiographDataset` with ``classes``.
        classes, templates: see :func:`class_text_embeddings`.
        feature_present: (N,) bool per row of ``dataset``, whether the image carries the planted
            feature; when given, the per-group table is computed too.
        device: where to compute.
        batch_size: images per forward pass.
        autocast: context manager factory around the forward passes.

    Returns:
        (accuracy, groups): accuracy in [0, 1] (NaN when no row has a known label), and the
        :func:`~ravl_med.evaluate.groups.group_accuracy_table` of (class x feature present/absent)
        without intervals (``n_boot=0``), or ``None`` without ``feature_present``.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast():
            text = class_text_embeddings(model, tokenizer, list(classes), templates, device=device).float()
    finally:
        model.train(was_training)
    labels, predicted = zero_shot_predictions(
        model, preprocess, text, dataset, device=device, batch_size=batch_size, autocast=autocast
    )
    flags = np.zeros(len(labels), dtype=bool) if feature_present is None else feature_present
    frame = GroupAccuracy(labels=labels, predictions=predicted, feature_present=flags, classes=classes, n_boot=0)
    return frame.overall, None if feature_present is None else frame.by_group
