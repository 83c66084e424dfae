"""A site's own artefacts: registry, import strings, size and placement for callables, placement
failures and visibility in the setting's metadata. Tiny images, a few samples each."""

from __future__ import annotations

import json
import logging
import uuid

import numpy as np
import pytest

from ravl_med.cli import main
from ravl_med.config import ConfigError
from ravl_med.phantom import CustomArtefact, Layout, get_artefact, register_artefact, unregister_artefact
from ravl_med.phantom import artefacts as artefacts_module
from ravl_med.phantom.artefacts import artefact_names, artefact_visibility
from ravl_med.phantom.config import PhantomSetting, load_suite
from ravl_med.phantom.writer import write_setting


@pytest.fixture(autouse=True)
def clean_registry():
    before = dict(artefacts_module._REGISTERED)
    yield
    artefacts_module._REGISTERED.clear()
    artefacts_module._REGISTERED.update(before)
    artefacts_module._CHECKED.clear()


def _block(rng, shape, layout):
    return np.ones((10, 10), dtype=np.float32)


def _tiny(artefact: str, name: str, **kw) -> PhantomSetting:
    return PhantomSetting(name=name, artefact=artefact, spurious_class="nodule", strength=0.9, n_train=4, n_val=0,
                          n_test=0, image_size=64, **kw)


def test_registered_artefact_is_used_by_name(monkeypatch):
    register_artefact("site_block", CustomArtefact(_block, name="site_block", placement="outside_lungs", level=0.8))
    register_artefact("site_patch", np.ones((6, 6)))
    assert {"site_block", "site_patch", "chest_drain"} <= set(artefact_names())
    # A setting's placement, level and scale override or multiply the registered instance's own.
    made = get_artefact("site_block", placement="any", scale=2.0, level=0.5)
    assert (made.placement, made.level, made.scale, made.name) == ("any", 0.5, 2.0, "site_block")
    assert get_artefact("site_block").placement == "outside_lungs"  # the registered one is untouched
    assert get_artefact("site_patch").name == "site_patch"
    assert _tiny("site_block", "x").artefact == "site_block"

    with pytest.raises(ValueError, match="already registered"):
        register_artefact("site_block", _block)
    register_artefact("site_block", _block, replace=True)
    with pytest.raises(ValueError, match="built-in"):
        register_artefact("pacemaker", _block)
    with pytest.raises(TypeError, match="give an Artefact"):
        register_artefact("site_number", 3.5)
    unregister_artefact("site_patch")
    with pytest.raises(ValueError, match="unknown artefact 'site_patch'"):
        _tiny("site_patch", "x")

    class Point:  # an installed package's entry point, loaded on first use
        value = "site_pkg:block"

        def load(self):
            return _block

    monkeypatch.setattr(artefacts_module, "_entry_points", lambda: {"site_ep": Point()})
    assert "site_ep" in artefact_names() and get_artefact("site_ep").name == "site_ep"


def _site_module(tmp_path, monkeypatch) -> str:
    """A site's artefact module on sys.path, under a fresh name (no stale sys.modules entry)."""
    name = f"site_artefacts_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "import numpy as np\n"
        "from ravl_med.phantom import CustomArtefact\n\n"
        "def _logo(rng, shape, layout):\n"
        "    return np.ones((8, 16), dtype=np.float32)\n\n"
        "hospital_logo = CustomArtefact(_logo, name='hospital_logo', size=0.25, placement='outside_lungs')\n"
        "def stripe(rng, shape, layout):\n"
        "    out = np.zeros(shape, dtype=np.float32)\n"
        "    out[:, : max(2, shape[1] // 16)] = 1.0\n"
        "    return out\n\n"
        "def broken(rng, shape, layout):\n"
        "    raise RuntimeError('no logo file on this machine')\n\n"
        "NOT_AN_ARTEFACT = 'hello'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _suite(tmp_path, artefacts: str) -> str:
    path = tmp_path / "site.yaml"
    path.write_text(f"name: site\nartefacts: {artefacts}\nspurious_classes: [nodule]\nstrengths: [0.9]\n"
                    "sizes: {n_train: 4, n_val: 0, n_test: 0, image_size: 64}\n")
    return str(path)


def test_import_strings_in_suite_yaml(tmp_path, monkeypatch, capsys):
    module = _site_module(tmp_path, monkeypatch)
    suite = load_suite(_suite(tmp_path, f"[{module}:hospital_logo, '{module}:stripe', chest_drain]"))
    names = [s.name for s in suite.settings()]
    assert names == ["hospital_logo-nodule-v0.90-s0", "stripe-nodule-v0.90-s0", "chest_drain-nodule-v0.90-s0"]
    logo = get_artefact(f"{module}:hospital_logo")
    assert isinstance(logo, CustomArtefact) and logo.placement == "outside_lungs"
    assert get_artefact(f"{module}:stripe").name == "stripe"  # a bare callable, named after its attribute
    assert main(["phantom", "list", "--suite", _suite(tmp_path, f"['{module}:stripe']")]) == 0
    assert "stripe-nodule-v0.90-s0" in capsys.readouterr().out
    assert main(["phantom", "write", "--out", str(tmp_path / "out"), "--artefact", f"{module}:hospital_logo",
                 "--spurious-class", "nodule", "--strength", "0.9", "--n-train", "4", "--n-val", "0", "--n-test", "0",
                 "--image-size", "64", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "hospital_logo-nodule-v0.90-s0: 4 images" in out and "artefact visibility" in out
    metadata = json.loads((tmp_path / "out" / "hospital_logo-nodule-v0.90-s0" / "metadata.json").read_text())
    assert metadata["setting"]["artefact"] == f"{module}:hospital_logo"
    assert metadata["artefact_placement"]["rule"] == "outside_lungs"
    assert main(["phantom", "write", "--out", str(tmp_path / "out"), "--artefact", "no_such_module_xyz:logo",
                 "--spurious-class", "nodule", "--strength", "0.9"]) == 2
    assert "cannot import 'no_such_module_xyz'" in capsys.readouterr().err

    refused = {
        "no_such_module_xyz:logo": "cannot import 'no_such_module_xyz': ModuleNotFoundError",
        f"{module}:missing": f"module '{module}' has no attribute 'missing'",
        f"{module}:NOT_AN_ARTEFACT": "got str; give an Artefact",
        f"{module}:broken": "cannot be drawn .* RuntimeError: no logo file on this machine",
    }
    for spec, message in refused.items():
        with pytest.raises(ConfigError, match=message) as caught:
            load_suite(_suite(tmp_path, f"['{spec}']"))
        assert "\n" not in str(caught.value) and "site.yaml: artefacts:" in str(caught.value)
    register_artefact("stripe", _block)
    with pytest.raises(ConfigError, match="distinct names"):  # both would be called stripe-nodule-...
        load_suite(_suite(tmp_path, f"[stripe, '{module}:stripe']"))


def test_callable_patches_and_drawings_scale_with_the_image():
    # A fixed-pixel patch with `size` keeps its share of the image at every image size, like the built-ins.
    patch = CustomArtefact(_block, size=0.1)
    share = [patch.render(np.random.default_rng(0), (n, n)).mask.sum() / n**2 for n in (64, 128, 256)]
    assert share[0] == pytest.approx(0.01, rel=0.25) and max(share) / min(share) < 1.3, share
    assert CustomArtefact(_block, size=0.1, scale=2.0).render(np.random.default_rng(0), (128, 128)).mask.sum() \
        == pytest.approx(4 * share[1] * 128**2, rel=0.15)

    def disc(rng, shape, layout):  # drawn in place, in fractions of the shape
        rr, cc = np.mgrid[: shape[0], : shape[1]]
        return ((rr - shape[0] * 0.5) ** 2 + (cc - shape[1] * 0.3) ** 2 <= (0.08 * shape[1]) ** 2).astype(np.float32)

    one = CustomArtefact(disc).render(np.random.default_rng(0), (128, 128)).mask
    two = CustomArtefact(disc, scale=2.0).render(np.random.default_rng(0), (128, 128)).mask
    assert two.sum() == pytest.approx(4 * one.sum(), rel=0.15)
    centre = [np.argwhere(m).mean(0) for m in (one, two)]
    assert np.allclose(centre[0], centre[1], atol=1.0)  # scaled about its centre, not moved


def test_a_drawing_that_breaks_its_rule_is_moved_or_reported():
    lungs = np.zeros((64, 64), dtype=bool)
    lungs[8:56, 8:30] = lungs[8:56, 34:56] = True
    layout = Layout(lungs=lungs)

    def on_the_lung(rng, shape, layout):
        out = np.zeros(shape, dtype=np.float32)
        out[20:26, 12:18] = 1.0
        return out

    kept = CustomArtefact(on_the_lung).render(np.random.default_rng(0), (64, 64), layout)  # no rule given: stays
    assert kept.mask[20:26, 12:18].all() and "placement_issue" not in kept.details
    moved = CustomArtefact(on_the_lung, placement="outside_lungs").render(np.random.default_rng(0), (64, 64), layout)
    assert moved.mask.sum() == 36 and not (moved.mask & lungs).any() and "placement_issue" not in moved.details
    # No room outside the lungs: the placement fails and the result says so.
    full = CustomArtefact(on_the_lung, placement="outside_lungs").render(
        np.random.default_rng(0), (64, 64), Layout(lungs=np.ones((64, 64), dtype=bool)))
    assert "rule outside_lungs" in full.details["placement_issue"]


def test_placement_failures_are_warned_and_written_to_the_metadata(tmp_path, caplog):
    register_artefact("site_banner", np.ones((12, 100)))  # wider than a 64-pixel image
    with caplog.at_level(logging.WARNING, logger="ravl_med.phantom.writer"):
        summary = write_setting(_tiny("site_banner", "banner"), tmp_path, progress=False)
    placed = json.loads(summary.metadata.read_text())["artefact_placement"]
    assert placed == summary.placement and placed["failed"] == placed["of"] > 0
    assert "falls outside the image" in placed["examples"][0]["issue"]
    assert any("could not be placed" in r.getMessage() and "site_banner" in r.getMessage() for r in caplog.records)


def test_artefact_visibility_by_hand_and_in_the_metadata(tmp_path):
    image = np.zeros((32, 32))
    mask = np.zeros((32, 32), dtype=bool)
    mask[10:14, 10:14] = True
    image[mask] = 1.0
    p = 16 / 1024
    assert artefact_visibility(image, mask) == pytest.approx(1 / np.sqrt(p * (1 - p)))
    assert np.isnan(artefact_visibility(image, np.zeros_like(mask)))

    register_artefact("site_bright", CustomArtefact(_block, size=0.15, level=1.0))
    register_artefact("site_faint", CustomArtefact(_block, size=0.15, level=0.6, opacity=0.35))
    seen = {}
    for name in ("site_bright", "site_faint"):
        summary = write_setting(_tiny(name, name), tmp_path, progress=False)
        seen[name] = json.loads(summary.metadata.read_text())["artefact_visibility"]
        assert seen[name] == summary.visibility and seen[name]["n_images"] > 0
        assert seen[name]["min"] <= seen[name]["mean"] <= seen[name]["max"]
    assert seen["site_bright"]["mean"] > seen["site_faint"]["mean"] + 0.5
    assert seen["site_bright"]["min"] > 0
