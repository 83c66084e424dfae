"""The hybrid's CPU stage-1 recipe: partial image-tower locking, the text cache, the frozen-feature cache.

Needs the PyPI packages that ship the pretrained towers; skipped, with the reason, when one is missing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.packages import HYBRID_PACKAGES, requires

pytestmark = requires(HYBRID_PACKAGES)

from ravl_med.config import ConfigError, FinetuneConfig, IngestConfig  # noqa: E402
from ravl_med.data.dataset import collate  # noqa: E402
from ravl_med.mitigate.methods import MitigationTrainer, RaVLObjective  # noqa: E402
from ravl_med.models import create_backbone, load_state_dict  # noqa: E402
from ravl_med.models.feature_cache import FrozenFeatureCache, TextEmbeddingCache, trim_padding  # noqa: E402
from ravl_med.models.optim import freeze_text_tower, seed_everything  # noqa: E402
from ravl_med.models.runtime import start_processes  # noqa: E402
from ravl_med.models.training import ContrastiveObjective, Trainer  # noqa: E402
from ravl_med.phantom import PhantomSetting, write_setting  # noqa: E402

MEDCLIP = "medclip-effnet-minilm"
CLASSES = ["no finding", "cardiomegaly", "pneumothorax"]


@pytest.fixture()
def medclip():
    torch.manual_seed(0)
    return create_backbone(MEDCLIP)


def _batch_norms(module):
    return {name: m for name, m in module.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


@pytest.mark.parametrize("unlocked", [0, 1, 3, 8])
def test_lock_image_tower_freezes_exactly_the_leading_groups_and_their_norms(medclip, unlocked):
    model = medclip[0]
    tower = model.visual
    groups = tower.parameter_groups()
    assert len(groups) == 8  # EfficientNet-Lite0: stem, blocks 0-5, block 6 with conv_head/bn2
    assert groups[0] == ["conv_stem.weight", "bn1.weight", "bn1.bias"] and "conv_head.weight" in groups[-1]
    assert model.lock_image_tower(unlocked) == 8 - unlocked
    frozen = {name for group in groups[: 8 - unlocked] for name in group}
    for name, parameter in tower.backbone.named_parameters():
        assert parameter.requires_grad == (name not in frozen), name
    assert all(p.requires_grad for p in tower.proj.parameters())
    assert all(p.requires_grad for p in model.text.parameters())  # the image lock leaves the text tower alone

    model.train()
    norms = _batch_norms(tower.backbone)
    frozen_norms = {name for name in norms if f"{name}.weight" in frozen}
    for name, norm in norms.items():
        assert norm.training == (name not in frozen_norms), name
    stats = {name: norms[name].running_mean.clone() for name in frozen_norms}
    model(torch.randn(2, 3, 64, 64))  # a training-mode forward leaves the frozen statistics alone
    for name in frozen_norms:
        assert torch.equal(stats[name], norms[name].running_mean), name


def test_frozen_prefix_runs_without_gradient_and_composes_to_the_trunk(medclip):
    model = medclip[0]
    tower = model.visual
    x = torch.randn(2, 3, 64, 64)
    assert tower.frozen_features(x) is x  # nothing locked: no prefix
    model.lock_image_tower(3)  # stem and blocks 0-3 frozen
    model.train()
    features = tower.frozen_features(x)
    assert features.shape == (2, 80, 4, 4) and not features.requires_grad
    out = tower.forward_from_frozen(features)
    out.sum().backward()
    assert tower.model.blocks[4][0].conv_pw.weight.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(tower.trunk_from_frozen(tower.frozen_features(x)), tower.trunk(x), rtol=0, atol=0)
        torch.testing.assert_close(tower.forward_from_frozen(tower.frozen_features(x)), tower(x))


def test_lock_refuses_more_groups_than_the_tower_has(medclip):
    with pytest.raises(ValueError, match=r"\[0, 8\]"):
        medclip[0].lock_image_tower(9)


def test_text_cache_returns_the_towers_embeddings_and_encodes_each_text_once(medclip):
    model, _, tokenizer = medclip
    texts = ["FINDINGS: Left pneumothorax with visible pleural line. IMPRESSION: Left pneumothorax.",
             "FINDINGS: Mild cardiomegaly.", "a chest x-ray showing no finding."]
    calls = []
    encode = model.encode_text
    model.encode_text = lambda tokens: calls.append(tokens.shape) or encode(tokens)
    cache = TextEmbeddingCache(model, tokenizer)
    got = cache([texts[0], texts[1], texts[0]])
    got_again = cache([texts[2], texts[1]])
    assert len(cache) == 3 and len(calls) == 2 and calls[0][1] < 128  # trailing padding trimmed
    with torch.no_grad():
        expected = F.normalize(encode(tokenizer(texts)), dim=-1)
    torch.testing.assert_close(got, expected[[0, 1, 0]], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_again, expected[[2, 1]], atol=1e-5, rtol=1e-5)


def test_trim_padding_keeps_every_used_column():
    tokens = torch.tensor([[5, 6, 0, 0, 0], [5, 6, 7, 0, 0]])
    assert torch.equal(trim_padding(tokens, 0), tokens[:, :3])
    assert trim_padding(torch.zeros(2, 4, dtype=torch.long), 0).shape == (2, 1)


def test_feature_cache_computes_each_image_once(medclip):
    model = medclip[0]
    model.lock_image_tower(3)
    model.eval()
    images = torch.randn(3, 3, 64, 64)
    asked = []
    cache = FrozenFeatureCache(model.visual)
    first = cache(["a", "b"], lambda rows: asked.append(rows) or images[:2][rows])
    second = cache(["b", "c", "a"], lambda rows: asked.append(rows) or images[[1, 2, 0]][rows])
    assert asked == [[0, 1], [1]] and len(cache) == 3
    torch.testing.assert_close(second, torch.cat([first[1:], model.visual.frozen_features(images[2:3]), first[:1]]))
    with pytest.raises(TypeError, match="no frozen prefix"):
        FrozenFeatureCache(torch.nn.Linear(2, 2))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    setting = PhantomSetting(name="recipe", artefact="chest_drain", spurious_class="pneumothorax", strength=0.9,
                             n_train=16, n_val=6, n_test=0, image_size=64, classes=CLASSES)
    path = write_setting(setting, tmp_path_factory.mktemp("phantom"), progress=False).manifest
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table["path"] = [str(path.parent / p) for p in table["path"]]
    out = path.parent / "absolute.csv"
    table.to_csv(out, index=False)
    return out


def _config(manifest: Path, out: Path, **overrides) -> FinetuneConfig:
    values = dict(
        backbone=MEDCLIP, manifest=manifest, classes=CLASSES, ingest=IngestConfig(image_size=64), epochs=2,
        batch_size=8, lr=1e-4, warmup_steps=1, label_aware=True, text="report", freeze_text=True, lock_image=True,
        lock_image_unlocked_groups=2, checkpoint_every=0, output_dir=out, seed=0, device="cpu", threads=1,
    )
    values.update(overrides)
    return FinetuneConfig(**values)


def test_cached_step_equals_uncached_step(manifest, tmp_path):
    # The same model and batch: outputs and gradients with both caches (filling them, then reading them)
    # equal those of the plain forward.
    trainer = Trainer(_config(manifest, tmp_path, cache_text=True, cache_frozen_features=True), progress=False)
    ctx, _ = start_processes("cpu", "fp32")
    seed_everything(0)
    model = trainer._build_model(ctx)
    train, _ = trainer.datasets()
    batch = collate([train[i] for i in range(8)])
    objective = ContrastiveObjective(label_aware=True)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def step():
        outputs = trainer.forward(model, batch, ctx)
        objective(batch, outputs).backward()
        grads = {name: p.grad.clone() for name, p in trainable}
        model.zero_grad(set_to_none=True)
        return outputs, grads

    filling, _ = step()
    reading, cached_grads = step()
    assert len(trainer._text_cache) == 8 and len(trainer._feature_cache) == 8
    trainer._text_cache = trainer._feature_cache = None
    plain, plain_grads = step()
    for key in ("image_features", "text_features", "logit_scale"):
        torch.testing.assert_close(filling[key], plain[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reading[key], plain[key], atol=1e-5, rtol=1e-5)
    assert {n for n, _ in trainable} >= {"visual.model.blocks.6.0.conv_pw.weight", "logit_scale"}
    assert not any(n.startswith(("visual.model.blocks.4.", "text.")) for n, _ in trainable)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_ravl_step_with_caches_equals_the_plain_step(manifest, tmp_path):
    # RaVL's loss embeds the regions: with both caches the trunk runs on after the cached frozen maps and
    # the reports come from the text cache; loss and gradients equal the uncached region path's.
    config = _config(manifest, tmp_path, cache_text=True, cache_frozen_features=True)
    trainer = MitigationTrainer(config, objective=RaVLObjective(label_aware=True), progress=False)
    ctx, _ = start_processes("cpu", "fp32")
    seed_everything(0)
    model = trainer._build_model(ctx)
    train, _ = trainer.datasets()
    batch = collate([train[i] for i in range(8)])
    rng = np.random.default_rng(0)
    trainer.region_labels = {str(k): rng.random(len(r)) < 0.3 for k, r in zip(batch["key"], batch["regions"])}
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

    def step():
        outputs = trainer.forward(model, batch, ctx)
        loss = trainer.objective(batch, outputs)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in trainable}
        model.zero_grad(set_to_none=True)
        return float(loss.detach()), outputs, grads

    step()  # fills both caches
    cached_loss, cached, cached_grads = step()
    assert len(trainer._text_cache) == 8 and len(trainer._feature_cache) == 8
    trainer._text_cache = trainer._feature_cache = None
    plain_loss, plain, plain_grads = step()
    assert cached_loss == pytest.approx(plain_loss, rel=1e-5)
    for key in ("image_features", "text_features"):
        torch.testing.assert_close(cached[key], plain[key], atol=1e-5, rtol=1e-5)
    for a, b in zip(cached["region_features"], plain["region_features"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cached_grads[name], grad, atol=1e-5, rtol=1e-3, msg=name)


def test_cached_recipe_trains_only_the_unlocked_groups(manifest, tmp_path):
    trainer = Trainer(_config(manifest, tmp_path / "cached", cache_text=True, cache_frozen_features=True),
                      progress=False)
    result = trainer.fit()  # two epochs: the second reads both caches
    assert result.steps == 4 and all(h.val_accuracy is not None for h in result.history)
    trained = load_state_dict(result.checkpoint)
    torch.manual_seed(0)
    initial = create_backbone(MEDCLIP)[0].state_dict()
    frozen = [n for n in trained if n.startswith(("visual.model.conv_stem", "visual.model.blocks.4.", "text."))]
    assert frozen and all(torch.equal(initial[n], trained[n]) for n in frozen)  # running statistics included
    assert not torch.equal(initial["visual.model.blocks.6.0.conv_pw.weight"], trained["visual.model.blocks.6.0.conv_pw.weight"])


def test_cache_keys_need_frozen_towers_and_counterfactual_training_is_not_cached(manifest, tmp_path):
    with pytest.raises(ValueError, match="cache_text needs freeze_text"):
        _config(manifest, tmp_path, freeze_text=False, cache_text=True)
    with pytest.raises(ValueError, match="cache_frozen_features needs lock_image"):
        _config(manifest, tmp_path, lock_image=False, cache_frozen_features=True)
    config = _config(manifest, tmp_path, cache_frozen_features=True)
    trainer = MitigationTrainer(config, objective=ContrastiveObjective(), train_wrapper=lambda dataset: dataset)
    assert trainer.images_fixed is False
    assert MitigationTrainer(config, objective=ContrastiveObjective()).images_fixed is True
    with pytest.raises(ConfigError, match="lock_image_unlocked_groups"):
        Trainer(_config(manifest, tmp_path / "bad", lock_image_unlocked_groups=9), progress=False).fit()


def test_frozen_text_tower_has_no_dropout_in_training(medclip):
    model, _, tokenizer = medclip
    tokens = tokenizer(["FINDINGS: Mild cardiomegaly. IMPRESSION: Mild cardiomegaly."] * 2)
    freeze_text_tower(model)
    model.train()
    assert model.visual.training and not model.text.training
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), model.encode_text(tokens), rtol=0, atol=0)
