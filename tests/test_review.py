"""The review step: review.yaml by report rank, hand edits, stale reviews, and the ``ravl-med review`` command."""

from __future__ import annotations

import json

import pytest
import yaml

from ravl_med.cli import main
from ravl_med.config import ConfigError
from ravl_med.stages.review import REVIEW_FILE, StaleReview, read_review, run_review


def _audit(folder, ranks=(1, 2), outcome="found"):
    """A minimal audit folder: audit.json with the primary method's ranked clusters, one gallery file; rank 1
    has counter-examples (their gallery file), rank 2 none (every image of its class is in the cluster)."""
    folder.mkdir(exist_ok=True)
    clusters = [{"rank": r, "cluster": 7 - r, "attribute_name": "pneumothorax" if r == 1 else "cardiomegaly",
                 "n_regions": 100 * r, "n_images": 10 * r, "p_adjusted": 0.001 * r, "stability": 1.0 - 0.3 * r,
                 "n_counter_gallery": 12 if r == 1 else 0,
                 "counter_gallery": "gallery-cluster-1-counter.png" if r == 1 else None}
                for r in ranks]
    (folder / "audit.json").write_text(json.dumps({
        "primary_method": "ravl", "outcome": outcome,
        "methods": {"ravl": {"outcome": outcome, "ranked_clusters": clusters}}}))
    (folder / "gallery-cluster-1.png").write_bytes(b"png")
    (folder / "gallery-cluster-1-counter.png").write_bytes(b"png")
    return folder


def test_review_lists_clusters_by_rank_and_records_verdicts(tmp_path):
    audit = _audit(tmp_path / "audit")
    review = run_review(audit)
    assert [c.rank for c in review.clusters] == [1, 2] and review.pending_ranks == [1, 2]
    assert review.clusters[0].gallery == "gallery-cluster-1.png" and review.clusters[1].gallery is None
    assert review.clusters[0].counter_gallery == "gallery-cluster-1-counter.png"
    assert review.clusters[1].counter_gallery is None
    text = (audit / REVIEW_FILE).read_text()
    assert text.startswith("# Review of a shortcut audit") and "cluster: " not in text  # ranks only, no internal ids
    assert read_review(audit).pending_ranks == [1, 2]
    written = yaml.safe_load(text)["clusters"]
    assert written[0]["counter_gallery"] == "gallery-cluster-1-counter.png"
    assert written[0]["counter_examples"] == "12 region(s) of pneumothorax images outside the cluster, the most " \
        "similar first"
    assert written[1]["counter_gallery"] is None
    assert written[1]["counter_examples"].startswith("none: every cardiomegaly image has a region in this cluster")

    assert run_review(audit, [2]).spurious_ranks == [2]
    assert [c.spurious for c in read_review(audit).clusters] == [False, True]
    assert run_review(audit).spurious_ranks == [2]  # no flags: the verdicts in the file are kept
    assert run_review(audit, []).spurious_ranks == []
    with pytest.raises(ConfigError, match="no cluster of rank 3 \\(kept: 1, 2\\)"):
        run_review(audit, [1, 3])


def test_review_file_edited_by_hand(tmp_path):
    audit = _audit(tmp_path / "audit")
    run_review(audit)
    path = audit / REVIEW_FILE
    text = path.read_text()
    path.write_text(text.replace("spurious: null", "spurious: yes", 1).replace("spurious: null", "spurious: no"))
    assert read_review(audit).spurious_ranks == [1]
    path.write_text(text.replace("spurious: null", "spurious: maybe", 1))
    with pytest.raises(ConfigError, match="cluster 1: spurious must be yes, no or null, not 'maybe'"):
        read_review(audit)
    body = yaml.safe_load(text)
    body["clusters"] = body["clusters"][:1]
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(ConfigError, match="ranks \\[1\\] do not match the audit's kept clusters \\[1, 2\\]"):
        read_review(audit)
    path.write_text("not: [a review")
    with pytest.raises(ConfigError, match="not a review file"):
        read_review(audit)


def test_a_review_of_an_earlier_audit_is_not_applied(tmp_path):
    audit = _audit(tmp_path / "audit")
    run_review(audit, [1])
    _audit(audit, ranks=(1,))  # the audit is run again: other clusters
    with pytest.raises(StaleReview, match="reviews another audit.json"):
        read_review(audit)
    assert run_review(audit).pending_ranks == [1]  # starts again instead of carrying verdicts over


def test_review_command(tmp_path, capsys):
    audit = _audit(tmp_path / "audit")
    assert main(["review", str(audit)]) == 0
    out = capsys.readouterr().out
    assert "cluster 1: tied to 'pneumothorax'; 100 regions in 10 images, adjusted p 0.001, stability 70%" in out
    assert "cluster 2: tied to 'cardiomegaly'; 200 regions in 20 images, adjusted p 0.002, stability 40% (unstable)" in out
    assert "not reviewed" in out and f"ravl-med review {audit} --spurious RANKS" in out
    assert "counter-examples: gallery-cluster-1-counter.png (12 region(s) of pneumothorax images" in out
    assert "counter-examples: none: every cardiomegaly image has a region in this cluster" in out
    assert main(["review", str(audit), "--spurious", "1"]) == 0
    out = capsys.readouterr().out
    assert "cluster 1: tied to 'pneumothorax'" in out and "SPURIOUS" in out and "ravl-med mitigate" in out
    for argv, message in (([str(audit), "--spurious", "one"], "--spurious: ranks are whole numbers"),
                          ([str(audit), "--spurious", "4"], "no cluster of rank 4"),
                          ([str(tmp_path / "nowhere")], "no such folder"),
                          ([str(tmp_path)], "no audit.json here")):
        assert main(["review", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    empty = _audit(tmp_path / "empty", ranks=(), outcome="not_significant")
    assert main(["review", str(empty)]) == 0
    assert "nothing to review: the audit reports no shortcut" in capsys.readouterr().out


def test_review_says_why_a_cluster_has_no_counter_examples(tmp_path):
    """Not tied to a class, the gallery file deleted, an audit.json without the field: each says so."""
    audit = _audit(tmp_path / "audit", ranks=(1, 2, 3))
    body = json.loads((audit / "audit.json").read_text())
    clusters = body["methods"]["ravl"]["ranked_clusters"]
    clusters[1]["attribute_name"] = None
    del clusters[2]["n_counter_gallery"], clusters[2]["counter_gallery"]
    (audit / "audit.json").write_text(json.dumps(body))
    (audit / "gallery-cluster-1-counter.png").unlink()
    notes = [c.counter_note for c in run_review(audit).clusters]
    assert notes == ["none: gallery-cluster-1-counter.png is missing from the audit folder",
                     "none: the cluster is not tied to a class",
                     "none: the audit recorded no counter-examples (written by an older ravl-med?)"]
