"""The audit pipeline (``run_audit``, ``ravl-med audit``): outputs, cache, ground truth, PHI, exit codes.

A random-initialised ``tiny-rn`` saved as a checkpoint is enough for the structure checks here; the
end-to-end Precision@10 tests on models that learned a shortcut use ``tests/shortcut_fixtures.py``.
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from ravl_med.cli import main
from ravl_med.config import ConfigError, IngestConfig, RegionConfig
from ravl_med.data.dataset import RadiographDataset
from ravl_med.data.manifest import Manifest
from ravl_med.discover.registry import build_discoverer
from ravl_med.discover.report import (
    OUTCOME_TEXT,
    GalleryTile,
    gallery_size,
    render_gallery,
    write_report_html,
)
from ravl_med.models import create_backbone, save_checkpoint
from ravl_med.models import embed as embed_module
from ravl_med.phantom import PhantomSetting, write_setting
from ravl_med.phantom.digits import QUADRANT_BOXES, write_digits
from ravl_med.stages import audit as audit_module
from ravl_med.stages.audit import run_audit, too_little_data
from ravl_med.stages.config import AuditConfig
from tests.factories import PATIENT_IDENTIFIERS, add_patient_identifiers

CLASSES = ["no finding", "cardiomegaly", "pneumothorax"]
N_TEST = 24
IMAGE_SIZE = 64  # ingest size; tiny-rn's input is 128, so boxes are scaled by 2 on the way in
PHI = PATIENT_IDENTIFIERS
_EMBED_BATCH = embed_module._embed_batch


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small phantom setting (test split only) with patient identifiers written into one DICOM."""
    setting = PhantomSetting(name="audit", artefact="chest_drain", spurious_class="pneumothorax", strength=0.0,
                             n_train=2, n_val=0, n_test=N_TEST, image_size=IMAGE_SIZE, classes=CLASSES)
    manifest = write_setting(setting, tmp_path_factory.mktemp("phantom"), progress=False).manifest
    first = Manifest.read(manifest).table.query("split == 'test'").iloc[0]["path"]
    add_patient_identifiers(first, PHI)
    return manifest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model, _, _ = create_backbone("tiny-rn")
    folder = tmp_path_factory.mktemp("finetuned")
    sha = save_checkpoint(model, folder / "model.safetensors")
    return folder, sha


def _config(phantom, checkpoint, out, **overrides) -> AuditConfig:
    values = {"checkpoint": checkpoint[0], "sha256": checkpoint[1], "manifest": phantom, "classes": CLASSES,
                  "ingest": IngestConfig(image_size=IMAGE_SIZE), "methods": ["ravl", "random", "george"],
                  "discovery": {"n_boot": 100, "n_stability": 3}, "output_dir": out, "batch_size": 8, "device": "cpu", "precision": "fp32",
                  # 8 images per class and a random model: the too-little-data rule has its own test below.
                  "min_images_per_class": 1, "min_zero_shot_accuracy": 0.0}
    values.update(overrides)
    return AuditConfig(**values)


class CountingEmbed:
    """Wraps ``embed._embed_batch``: counts calls, optionally raises after ``fail_after`` (a kill)."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.calls += 1
        return _EMBED_BATCH(*args, **kwargs)


@pytest.fixture(scope="module")
def audited(phantom, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    return run_audit(_config(phantom, checkpoint, out), progress=False)


def _all_output_bytes(folder) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ----------------------------------------------------------------------------- outputs


def test_outputs_written(audited):
    out = audited.output_dir
    for name in ("audit.json", "report.html", "clusters.csv"):
        assert (out / name).is_file(), name
    audit = json.loads((out / "audit.json").read_text())
    assert audit["outcome"] == audited.outcome
    assert list(audit["methods"]) == ["ravl", "random", "george"]
    ravl = audited.discoverers["ravl"]
    for cluster in ravl.ranked_clusters_:  # one gallery per kept RaVL cluster
        assert (out / f"gallery-cluster-{cluster.rank}.png").is_file()
    # The random baseline always ranks one group: its gallery is there, with the documented size.
    random_cluster = audit["methods"]["random"]["ranked_clusters"][0]
    assert random_cluster["gallery"] == "gallery-random-cluster-1.png"
    with Image.open(out / random_cluster["gallery"]) as png:
        assert png.size == gallery_size(12, 3, 160)
    assert len(random_cluster["gallery_regions"]) == 12
    rows = (out / "clusters.csv").read_text().splitlines()
    n_clusters = sum(len(m["ranked_clusters"]) for m in audit["methods"].values())
    assert len(rows) == 1 + n_clusters * len(CLASSES)
    assert rows[0].startswith("method,rank,attribute,")  # one numbering: ranks, not internal cluster ids
    # Known subgroup attributes of the phantom manifest, never its ground-truth columns.
    by_value = audit["attributes"]["by_value"]
    assert {r["attribute"] for r in by_value} <= {"site", "device", "view_position", "sex", "age_band"}
    assert {r["attribute"] for r in by_value} & {"site", "sex"}
    for name in {r["attribute"] for r in by_value}:
        assert sum(r["count"] for r in by_value if r["attribute"] == name) == N_TEST
    report = (out / "report.html").read_text()
    assert "<h2 id='attributes'>Known attributes</h2>" in report
    step = "ravl-med review AUDIT_DIR --spurious" if ravl.ranked_clusters_ else "nothing to mitigate"
    assert step in report[report.index("<h2>Next step"):]


def test_report_in_a_browser(audited, chromium, tmp_path):
    """The report as a reviewer sees it: short, findings first, baselines collapsed, galleries at full size."""
    chromium.get((audited.output_dir / "report.html").resolve().as_uri())
    height = chromium.execute_script("return document.body.scrollHeight")
    chromium.set_window_size(1400, min(int(height) + 200, 16000))
    chromium.save_screenshot(str(tmp_path / "report.png"))
    headings = [h.text for h in chromium.find_elements("css selector", "h2")]
    assert headings[0] == "Summary" and headings[1].startswith("ravl") and "Glossary" in headings
    assert headings.index("Baselines") < headings.index("Glossary")
    closed = chromium.execute_script("return [...document.querySelectorAll('details')].map(d => d.open)")
    assert closed == [False, False]  # random, george
    assert height < 6000, height  # baselines collapsed: ~19,000 px before
    chromium.find_element("css selector", "details > summary").click()  # open the random baseline
    sizes = chromium.execute_script(
        "return [...document.images].map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
    shown = [s for s in sizes if s[2] > 0]  # galleries of the primary method and of the opened baseline
    assert shown and all(done and width > 0 and shown_w >= 0.95 * width for done, width, shown_w in shown), sizes
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_json_matches_estimator(audited):
    """audit.json holds exactly what the discoverer computes from the audit's own inputs."""
    emb = audited.embeddings
    audit = json.loads((audited.output_dir / "audit.json").read_text())
    for method in ("ravl", "random", "george"):
        discovery = audited.config.discovery
        disc = build_discoverer(method, discovery=discovery, n_boot=discovery.n_boot,
                                n_top_regions=discovery.n_top_regions, random_state=audited.config.seed).fit(
            emb.region_embeddings, emb.region_image, emb.labels, audited.image_scores, audited.region_scores,
            class_names=CLASSES, image_embeddings=emb.image_embeddings)
        expected = disc.to_dict()
        written = audit["methods"][method]
        for key in ("outcome", "notes", "params", "n_classes", "class_names"):
            assert written[key] == expected[key], (method, key)
        added = {"precision_at_k", "n_gallery", "gallery_regions", "gallery", "n_counter_gallery",
                 "counter_gallery_regions", "counter_gallery"}
        got = [{k: v for k, v in c.items() if k not in added} for c in written["ranked_clusters"]]
        assert got == expected["ranked_clusters"], method
    # Zero-shot scores agree with the image predictions reported.
    predicted = audited.image_scores.argmax(1)
    assert audit["zero_shot"]["accuracy"] == pytest.approx(float(np.mean(predicted == emb.labels)))


def test_html_is_self_contained_and_states_the_outcome(audited):
    text = (audited.output_dir / "report.html").read_text()
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", text, flags=re.IGNORECASE)
    assert links and all(link.startswith(("data:", "#")) for link in links)  # embedded, or anchors in the page
    assert "<script" not in text.lower() and "url(" not in text.lower()
    assert html.escape(OUTCOME_TEXT[audited.outcome], quote=True) in text
    assert "Summary" in text and "Precision@10" in text
    assert text.count("data:image/png;base64,") == len(audited.files["galleries"])


def test_region_boxes_and_ground_truth_are_in_the_same_frame(audited, phantom):
    emb = audited.embeddings
    dataset = RadiographDataset(phantom, IngestConfig(image_size=IMAGE_SIZE), CLASSES, split="test")
    scale = IMAGE_SIZE / 128
    for i in (0, 5):
        np.testing.assert_allclose(emb.region_boxes[emb.regions_of(i)] * scale, dataset[i]["regions"], atol=1e-4)
    present = dataset.table["artefact_present"].astype(int).to_numpy().astype(bool)
    truth = audited.region_is_spurious
    per_image = np.bincount(emb.region_image, weights=truth, minlength=len(dataset))
    assert np.all(per_image[present] >= 1) and np.all(per_image[~present] == 0)
    audit = audited.audit
    assert audit["ground_truth"]["kind"] == "mask"
    assert set(audited.precision) == {"ravl", "random", "george"}


# ----------------------------------------------------------------------------- cache and resumption


def test_second_run_computes_no_embeddings(audited, monkeypatch):
    counter = CountingEmbed()
    monkeypatch.setattr(embed_module, "_embed_batch", counter)
    again = run_audit(audited.config, progress=False)
    assert counter.calls == 0 and again.batches_computed == 0 and again.batches_reused == N_TEST // 8
    assert again.audit["methods"]["ravl"]["ranked_clusters"] == audited.audit["methods"]["ravl"]["ranked_clusters"]


def test_killed_audit_resumes(phantom, checkpoint, tmp_path, monkeypatch):
    config = _config(phantom, checkpoint, tmp_path / "out", methods=["ravl"], batch_size=4)
    monkeypatch.setattr(embed_module, "_embed_batch", CountingEmbed(fail_after=2))
    with pytest.raises(KeyboardInterrupt):
        run_audit(config, progress=False)
    assert not (tmp_path / "out" / "audit.json").exists()
    counter = CountingEmbed()
    monkeypatch.setattr(embed_module, "_embed_batch", counter)
    result = run_audit(config, progress=False)
    assert counter.calls == N_TEST // 4 - 2
    assert (result.batches_computed, result.batches_reused) == (N_TEST // 4 - 2, 2)


# ----------------------------------------------------------------------------- privacy


def test_no_patient_identifiers_in_outputs(audited):
    outputs = _all_output_bytes(audited.output_dir)
    assert outputs
    for path, data in outputs.items():
        for value in [*PHI.values(), "PHANTOM^", "PHANTOM-"]:
            assert value.encode() not in data, (path.name, value)
        assert b".dcm" not in data, path.name  # no image path either


# ----------------------------------------------------------------------------- legitimate non-findings


def test_no_structure_is_reported_not_raised(audited, tmp_path):
    config = audited.config.model_copy(update={"output_dir": tmp_path, "methods": ["ravl"],
                                               "cache_dir": audited.config.resolved_cache_dir})
    config.discovery = config.discovery.model_copy(update={"min_silhouette": 0.99})
    result = run_audit(config, progress=False)
    assert result.outcome == "no_structure"
    text = (tmp_path / "report.html").read_text()
    assert html.escape(OUTCOME_TEXT["no_structure"], quote=True) in text
    assert "no structure found" in text
    assert not list(tmp_path.glob("gallery-cluster-*.png"))


def test_too_little_data_to_conclude(audited, tmp_path, capsys):
    """8 images per class (< 20), or a model at chance: the audit does not conclude, and mitigation refuses it."""
    config = audited.config.model_copy(update={"output_dir": tmp_path, "methods": ["ravl"], "min_images_per_class": 20,
                                               "cache_dir": audited.config.resolved_cache_dir})
    result = run_audit(config, progress=False)
    assert result.outcome == "too_little_data" and result.audit["outcome"] == "too_little_data"
    assert result.audit["too_little_data"][0] == ("fewer than 20 images of a class (no finding 8, cardiomegaly 8, "
                                                  "pneumothorax 8)")
    assert result.audit["methods"]["ravl"]["outcome"] == result.discoverers["ravl"].outcome_  # kept for inspection
    assert result.summary_lines()[0].startswith("too little data to conclude: fewer than 20 images")
    assert html.escape(OUTCOME_TEXT["too_little_data"], quote=True) in (tmp_path / "report.html").read_text()
    labels = np.asarray(result.embeddings.labels)
    at_chance = np.full((len(labels), len(CLASSES)), 1 / 3)
    at_chance[np.arange(len(labels)), (labels + 1) % 3] = 0.5  # every image wrong
    reasons = too_little_data(config.model_copy(update={"min_images_per_class": 1, "min_zero_shot_accuracy": None}),
                              labels, at_chance)
    assert reasons == ["zero-shot accuracy 0% is not above 33% (chance): the model does not tell the classes apart on "
                       "these images (check class names, prompts and preprocessing)"]


def _write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _copy_data(phantom, folder, edit) -> object:
    """The phantom's data copied to ``folder`` with ``edit(dataset)`` applied to every DICOM; its manifest path."""
    import shutil

    import pydicom

    shutil.copytree(phantom.parent, folder)
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
    return folder / phantom.name


def _burn_in_text(ds) -> None:
    """Burns 'DOE 1957' into the pixels the way a modality does: white text on a black band across the top."""
    from PIL import ImageDraw, ImageFont

    pixels = ds.pixel_array.copy()
    black, white = ((pixels.max(), pixels.min()) if ds.PhotometricInterpretation == "MONOCHROME1"
                    else (pixels.min(), pixels.max()))
    pixels[:12] = black
    canvas = Image.fromarray(pixels.astype(np.int32), mode="I")
    ImageDraw.Draw(canvas).text((2, 2), "DOE 1957", fill=int(white), font=ImageFont.load_default(size=8))
    ds.PixelData = np.asarray(canvas).astype(pixels.dtype).tobytes()


def test_burned_in_annotations_are_warned_about_or_kept_out(audited, phantom, tmp_path):
    """Gallery thumbnails of images whose header says BurnedInAnnotation YES: a warning, or crops only."""

    def declare(ds):
        ds.BurnedInAnnotation = "YES"

    config = audited.config.model_copy(update={"output_dir": tmp_path / "out", "methods": ["random"],
                                               "manifest": _copy_data(phantom, tmp_path / "data", declare)})
    audit = run_audit(config, progress=False).audit
    # The phantoms' pixels hold no text: only the header flags them.
    assert audit["burned_in_annotation"] == {"gallery_images": 12, "dicom_attribute": 12, "pixel_check": 0,
                                             "crops_only": False}
    report = (tmp_path / "out" / "report.html").read_text()
    assert "Warning: burned-in text.</b> 12 image(s) shown in the galleries may hold burned-in text, flagged 12 by " \
           "the DICOM attribute (BurnedInAnnotation YES):" in report
    # The random baseline's one group holds every region: tied to no class, it has no counter-examples.
    cluster = audit["methods"]["random"]["ranked_clusters"][0]
    assert cluster["attribute_name"] is None
    assert (cluster["n_counter_gallery"], cluster["counter_gallery"]) == (0, None)
    assert "No counter-examples: the cluster is not tied to a class." in report
    assert not list((tmp_path / "out").glob("*-counter.png"))
    config.report = config.report.model_copy(update={"crops_only": True})
    config.output_dir = tmp_path / "crops"
    audit = run_audit(config, progress=False).audit
    assert "Warning: burned-in text." not in (tmp_path / "crops" / "report.html").read_text()
    with Image.open(tmp_path / "crops" / audit["methods"]["random"]["ranked_clusters"][0]["gallery"]) as png:
        assert png.size == gallery_size(12, 3, 160, crops_only=True)


def test_burned_in_text_in_the_pixels_is_warned_about(audited, phantom, tmp_path):
    """No header says so, but the pixels hold a name and a year: the pixel check flags the gallery images."""
    config = audited.config.model_copy(update={"output_dir": tmp_path / "out", "methods": ["random"],
                                               "manifest": _copy_data(phantom, tmp_path / "data", _burn_in_text)})
    audit = run_audit(config, progress=False).audit
    assert audit["burned_in_annotation"] == {"gallery_images": 12, "dicom_attribute": 0, "pixel_check": 12,
                                             "crops_only": False}
    assert ("12 image(s) shown in the galleries may hold burned-in text, flagged 12 by the pixel check (lines of "
            "text-like marks)") in (tmp_path / "out" / "report.html").read_text()


def test_the_sha256_recorded_by_finetune_is_checked(audited, checkpoint, tmp_path):
    """A fine-tuning output folder carries its weights' sha256 (metrics.json): the audit verifies against it."""
    import shutil

    folder = tmp_path / "finetuned"
    folder.mkdir()
    shutil.copy(checkpoint[0] / "model.safetensors", folder / "model.safetensors")
    record = {"sha256": checkpoint[1], "config": {"classes": CLASSES}}  # as finetune writes it (abridged)
    (folder / "metrics.json").write_text(json.dumps(record))
    config = audited.config.model_copy(update={"output_dir": tmp_path / "out", "methods": ["random"],
                                               "checkpoint": folder, "sha256": None,
                                               "cache_dir": audited.config.resolved_cache_dir})
    notes = run_audit(config, progress=False).audit["notes"]
    assert any("verified against the sha256 that 'ravl-med finetune' recorded" in n for n in notes)
    assert not any("no sha256 given" in n for n in notes)
    (folder / "metrics.json").write_text(json.dumps(record | {"sha256": "0" * 64}))  # weights changed since training
    with pytest.raises(ConfigError, match="sha256"):
        run_audit(config, progress=False)


def test_a_manifest_without_splits_is_audited_whole(phantom, checkpoint, tmp_path, capsys):
    """'ravl-med manifest dicom' writes no split column; the default split 'test' must not empty the audit."""
    import pandas as pd

    table = pd.read_csv(phantom, dtype=str, keep_default_na=False).query("split == 'test'")
    table = table.drop(columns=["split", *[c for c in table.columns if c.startswith(("mask_", "artefact"))]])
    table["path"] = [str(phantom.parent / p) for p in table["path"]]
    table.to_csv(tmp_path / "no-splits.csv", index=False)
    data = {"checkpoint": str(checkpoint[0]), "sha256": checkpoint[1], "manifest": str(tmp_path / "no-splits.csv"),
            "classes": CLASSES, "ingest": {"image_size": IMAGE_SIZE}, "output_dir": str(tmp_path / "out"),
            "batch_size": 8, "device": "cpu", "discovery": {"n_boot": 50, "n_stability": 0}}
    assert main(["audit", "--config", _write_yaml(tmp_path / "audit.yaml", data), "--no-progress",
                 "--no-tracking"]) == 0
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert audit["dataset"]["split"] is None and audit["dataset"]["n_images"] == N_TEST
    assert "the manifest defines no splits: every row is audited (split 'test' not applied)." in audit["notes"]


def test_cli_single_class_exits_0_with_a_note(phantom, checkpoint, tmp_path, capsys):
    data = {"checkpoint": str(checkpoint[0]), "sha256": checkpoint[1], "manifest": str(phantom),
            "classes": ["no finding"], "ingest": {"image_size": IMAGE_SIZE}, "output_dir": str(tmp_path / "out"),
            "batch_size": 8, "device": "cpu", "discovery": {"n_boot": 50, "n_stability": 0}, "min_images_per_class": 1}
    code = main(["audit", "--config", _write_yaml(tmp_path / "audit.yaml", data), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "nothing found" in printed and "report.html" in printed
    audit = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert audit["outcome"] == "no_candidate"
    assert any("single class" in note for note in audit["notes"])
    assert any("refused" in note for note in audit["notes"])  # rows of the other classes
    assert "single class" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("case", ["unknown_key", "no_manifest", "bad_sha", "bad_method", "missing_file"])
def test_cli_bad_input_exits_2(case, phantom, checkpoint, tmp_path, capsys):
    data = {"checkpoint": str(checkpoint[0]), "sha256": checkpoint[1], "manifest": str(phantom),
            "classes": CLASSES, "ingest": {"image_size": IMAGE_SIZE}, "output_dir": str(tmp_path / "out"),
            "device": "cpu"}
    extra: list[str] = []
    if case == "unknown_key":
        data["discovery"] = {"influence_treshold": 0.3}
    elif case == "no_manifest":
        del data["manifest"]
    elif case == "bad_sha":
        data["sha256"] = "0" * 64
    elif case == "bad_method":
        extra = ["--methods", "ravl,magic"]
    path = _write_yaml(tmp_path / "audit.yaml", data) if case != "missing_file" else str(tmp_path / "none.yaml")
    assert main(["audit", "--config", path, "--no-progress", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ravl-med audit: error:")
    assert not (tmp_path / "out" / "audit.json").exists()


# ----------------------------------------------------------------------------- digits, gallery


def test_digits_quadrant_ground_truth(tmp_path, checkpoint):
    manifest = write_digits(tmp_path / "digits", n_train=0, n_val=0, n_test=8, seed=1)
    config = AuditConfig(
        checkpoint=checkpoint[0], sha256=checkpoint[1], manifest=manifest,
        classes=["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"],
        templates=["a photo of the number {}"],
        ingest=IngestConfig(image_size=56, regions=RegionConfig(grid_sizes=[2], overlap=0.0, within="image"),
                            quality={"min_side": 56, "colour_tolerance": 1.0}),
        methods=["random"], discovery={"n_boot": 20, "n_stability": 0}, output_dir=tmp_path / "out", batch_size=8, device="cpu")
    result = run_audit(config, progress=False)
    assert result.audit["ground_truth"]["kind"] == "quadrant"
    table = Manifest.read(manifest).table
    square = table["square_quadrant"].astype(int).to_numpy()
    emb, truth = result.embeddings, result.region_is_spurious
    for i in range(len(square)):
        regions = emb.regions_of(i)
        boxes = np.rint(emb.region_boxes[regions] * 56 / 128).astype(int).tolist()
        assert sorted(map(tuple, boxes)) == sorted(QUADRANT_BOXES)
        hits = [tuple(b) for b, t in zip(boxes, truth[regions]) if t]
        assert hits == ([QUADRANT_BOXES[square[i]]] if square[i] >= 0 else [])


def test_gallery_size_and_tiles(tmp_path):
    image = np.linspace(0, 1, 50 * 40, dtype=np.float32).reshape(50, 40)
    tiles = [GalleryTile(image, (5, 5, 20, 30), f"tile {i}") for i in range(5)]
    path = render_gallery(tiles, tmp_path / "g.png", columns=2, tile_size=64)
    with Image.open(path) as png:
        assert png.size == gallery_size(5, 2, 64)
        pixels = np.asarray(png.convert("RGB"))
    assert np.any(np.all(pixels == (230, 30, 30), axis=-1))  # the box is drawn
    empty = render_gallery([], tmp_path / "e.png")
    with Image.open(empty) as png:
        assert png.size == gallery_size(0)


def test_audit_saves_every_stage1_medoid_for_mitigation(audited):
    # Regression: audit.json only described the kept clusters, but nearest-medoid labelling of the
    # training regions (stage 2) needs all k medoids.
    from ravl_med.discover.medoids import Stage1Medoids

    result = audited
    medoids = Stage1Medoids.load(result.output_dir)
    disc = result.discoverers["ravl"]
    assert len(medoids.embeddings) == disc.n_clusters_
    np.testing.assert_allclose(medoids.embeddings, result.embeddings.region_embeddings[disc.medoids_])


# ----------------------------------------------------------------------------- counter-examples


@pytest.fixture(scope="module")
def planted(audited, tmp_path_factory):
    """The audit again (embeddings from the cache) with zero-shot scores that tie one RaVL cluster to a class.

    The random model has no shortcut, so one is planted in its scores: every image with a region in the cluster
    is predicted as the class (right for that class, wrong for the others), the images of the class without it
    are predicted wrong, and the cluster's regions score highest for the class. The clustering is the fixture's
    (same embeddings, same seed). The cluster is the one with the most images with and without it in every
    class; the class, the one with the most images without it (the counter-examples).
    """
    emb, disc = audited.embeddings, audited.discoverers["ravl"]
    labels = np.asarray(emb.labels)
    presence = np.zeros((disc.n_clusters_, len(labels)), dtype=bool)
    presence[disc.labels_, emb.region_image] = True
    split = [[min(presence[c][labels == y].sum(), (~presence[c][labels == y]).sum()) for y in range(len(CLASSES))]
             for c in range(disc.n_clusters_)]
    cluster = max(range(disc.n_clusters_), key=lambda c: min(split[c]))
    tied = max(range(len(CLASSES)), key=lambda y: (~presence[cluster][labels == y]).sum())
    assert min(split[cluster]) >= 2, split  # the random model's clustering has such a cluster
    has = presence[cluster]
    predicted = np.where(has, tied, np.where(labels == tied, (tied + 1) % len(CLASSES), labels))
    image_scores = np.full((len(labels), len(CLASSES)), 0.1, dtype=np.float32)
    image_scores[np.arange(len(labels)), predicted] = 0.8
    region_scores = np.full((len(emb.region_image), len(CLASSES)), 1 / 3, dtype=np.float32)
    region_scores[disc.labels_ == cluster] = 0.05
    region_scores[disc.labels_ == cluster, tied] = 0.9
    n_gallery = int(min(4, (~has[labels == tied]).sum()))
    config = audited.config.model_copy(update={
        "output_dir": tmp_path_factory.mktemp("planted"), "methods": ["ravl"],
        "cache_dir": audited.config.resolved_cache_dir,
        "discovery": audited.config.discovery.model_copy(update={"n_stability": 0}),
        "report": audited.config.report.model_copy(update={"gallery_regions": n_gallery})})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(audit_module, "_zero_shot", lambda *args: (audited.text_embeddings, image_scores, region_scores))
        return run_audit(config, progress=False), cluster


def test_counter_gallery_of_each_kept_cluster(planted, tmp_path):
    """Under each kept cluster's gallery: regions of its class's images without a region in the cluster, the
    nearest the medoid first, one per image, as many tiles as the main gallery; in audit.json and report.html."""
    result, planted_cluster = planted
    emb, disc, out = result.embeddings, result.discoverers["ravl"], result.output_dir
    assert result.outcome == "found" and planted_cluster in [c.cluster for c in disc.ranked_clusters_]
    labels = np.asarray(emb.labels)
    unit = emb.region_embeddings / np.linalg.norm(emb.region_embeddings, axis=1, keepdims=True)
    audit = json.loads((out / "audit.json").read_text())
    report = (out / "report.html").read_text()
    n_gallery = result.config.report.gallery_regions
    for cluster, ranked, regions in zip(audit["methods"]["ravl"]["ranked_clusters"], disc.ranked_clusters_,
                                        disc.ranked_regions_):
        tied = CLASSES.index(cluster["attribute_name"])
        in_cluster = set(emb.region_image[regions].tolist())
        without = [i for i in np.flatnonzero(labels == tied) if i not in in_cluster]
        # By hand: each such image's region nearest the medoid, the images by that similarity.
        similarity = unit @ unit[ranked.medoid]
        best = {i: max(emb.regions_of(i), key=lambda r: similarity[r]) for i in without}
        expected = sorted(best.values(), key=lambda r: -similarity[r])[:n_gallery]
        shown = [entry["region"] for entry in cluster["counter_gallery_regions"]]
        assert shown == [int(r) for r in expected]
        images = emb.region_image[shown]
        assert len(set(images.tolist())) == len(shown) and not set(images.tolist()) & in_cluster
        assert np.all(labels[images] == tied)
        assert {entry["label"] for entry in cluster["counter_gallery_regions"]} == {cluster["attribute_name"]}
        assert cluster["n_counter_gallery"] == len(shown) == min(n_gallery, len(without))
        name = f"gallery-cluster-{cluster['rank']}-counter.png"
        assert cluster["counter_gallery"] == name and name in audit["files"]["galleries"]
        with Image.open(out / name) as png:
            assert png.size == gallery_size(len(shown), 3, 160)
        assert f"alt='counter-examples of ravl cluster {cluster['rank']}'" in report
        assert (f"Counter-examples: regions of {cluster['attribute_name']} images that the audit did not put in this "
                "cluster, the most similar ones first") in report
    planted_entry = next(c for c in audit["methods"]["ravl"]["ranked_clusters"] if c["cluster"] == planted_cluster)
    assert planted_entry["n_counter_gallery"] == planted_entry["n_gallery"] == n_gallery  # as many tiles as the main
    assert report.count("data:image/png;base64,") == len(result.files["galleries"])
    # A cluster that every image of its class has a region in: no gallery, one line.
    planted_entry.update(n_counter_gallery=0, counter_gallery=None, counter_gallery_regions=[])
    text = write_report_html(audit, {}, {}, tmp_path / "report.html").read_text()
    assert (f"No counter-examples: every {planted_entry['attribute_name']} image has a region in this cluster, so "
            "there is no image of the class without it to compare with.") in text
