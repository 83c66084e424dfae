"""Zero-shot maths on hand-made embeddings."""

from __future__ import annotations

import pytest
import torch

from ravl_med.models import create_backbone
from ravl_med.models.zeroshot import (
    CXR_TEMPLATES,
    class_text_embeddings,
    zero_shot_logits,
    zero_shot_scores,
)


class _LookupText:
    """encode_text returns a fixed vector per prompt, so the averaging can be checked by hand."""

    def __init__(self, table):
        self.table = table
        self.prompts = list(table)
        self._parameter = torch.nn.Parameter(torch.zeros(1))

    def parameters(self):
        yield self._parameter

    def tokenize(self, prompts):
        return torch.tensor([self.prompts.index(p) for p in prompts])

    def encode_text(self, tokens):
        return torch.stack([self.table[self.prompts[i]] for i in tokens.tolist()])


def test_templates_normalised_averaged_renormalised():
    table = {
        "a {}".replace("{}", "cat"): torch.tensor([3.0, 0.0]),  # unit after normalising: (1, 0)
        "the cat": torch.tensor([0.0, 0.5]),  # (0, 1)
        "a dog": torch.tensor([-2.0, 0.0]),
        "the dog": torch.tensor([-1.0, 0.0]),
    }
    model = _LookupText(table)
    text = class_text_embeddings(model, model.tokenize, ["cat", "dog"], ["a {}", lambda name: f"the {name}"])
    # Without the per-template normalisation the cat vector would lean to (3, 0.5).
    torch.testing.assert_close(text, torch.tensor([[2**-0.5, 2**-0.5], [-1.0, 0.0]]))


def test_scores_softmax_with_temperature():
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    cos = torch.tensor([[1.0, 0.6], [0.0, 0.8]])
    for temperature in (0.07, 1.0):
        torch.testing.assert_close(zero_shot_logits(embeddings, text, temperature), cos / temperature)
        expected = (cos / temperature).exp() / (cos / temperature).exp().sum(dim=1, keepdim=True)
        torch.testing.assert_close(zero_shot_scores(embeddings, text, temperature), expected)
    assert zero_shot_scores(embeddings, text).argmax(dim=1).tolist() == [0, 1]
    with pytest.raises(ValueError):
        zero_shot_scores(embeddings, text, temperature=0.0)


def test_with_tiny_backbone():
    torch.manual_seed(0)
    model, preprocess, tokenizer = create_backbone("tiny-rn")
    with torch.no_grad():
        text = class_text_embeddings(model, tokenizer, ["cardiomegaly", "pneumothorax", "no finding"])
        images = model.encode_image(preprocess(torch.rand(5, 1, 128, 128)))
    assert text.shape == (3, 64)
    torch.testing.assert_close(text.norm(dim=1), torch.ones(3))
    scores = zero_shot_scores(images, text)
    assert scores.shape == (5, 3)
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(5))
    assert len(CXR_TEMPLATES) >= 4 and all("{}" in t for t in CXR_TEMPLATES)
