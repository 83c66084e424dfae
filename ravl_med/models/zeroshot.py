"""Zero-shot classification from class names and prompt templates (RaVL stage 1, step 1).

For each class q: encode every template filled with the class name, L2-normalise each, average,
L2-normalise again -> t_q. Scores p(q | x) = softmax_q(<e_x, t_q> / T), T = 0.07 by default. The
same scoring applies to image embeddings and to region embeddings
(:class:`~ravl_med.models.regions.RegionEmbedder`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "CXR_TEMPLATES",
    "DEFAULT_TEMPERATURE",
    "class_text_embeddings",
    "zero_shot_logits",
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
    prompts = [_fill(template, name) for name in classes for template in templates]
    tokens = tokenizer(prompts).to(device)
    embeddings = F.normalize(model.encode_text(tokens).float(), dim=-1)
    embeddings = embeddings.view(len(classes), len(templates), -1).mean(dim=1)
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
