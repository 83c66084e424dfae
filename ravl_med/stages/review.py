"""The review step between audit and mitigation: a person decides which of the audit's clusters are shortcuts.

The audit ranks clusters; only a reviewer looking at their galleries can tell a chest drain (a
shortcut) from the lung apex (part of the anatomy the class is about). :func:`run_review` writes
``review.yaml`` into the audit folder: one entry per kept cluster of the audit's primary method,
numbered by its rank, the report's numbering (``gallery-cluster-<rank>.png``, "cluster <rank>" in
``report.html``, ``rank`` in ``clusters.csv``; the clustering's internal cluster ids appear nowhere a
reviewer reads), with its gallery and its counter-example gallery (``gallery-cluster-<rank>-counter.png``:
regions of images of the same class outside the cluster; or a line saying why there is none). Each
entry's ``spurious`` is ``null`` until reviewed, then ``yes`` or ``no``; the file may be edited by hand
or filled by ``ravl-med review AUDIT_DIR --spurious 1,3``.
:func:`~ravl_med.stages.mitigate.run_mitigation` reads it (:func:`read_review`) and fine-tunes away
the clusters marked ``yes``.

The file records the sha256 of the ``audit.json`` it reviews: a review of an earlier audit in the same
folder is refused rather than applied to clusters that may have changed rank. Nothing here imports
torch: the command answers at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from ravl_med.config import ConfigError
from ravl_med.data.atomic import atomic_path

__all__ = ["REVIEW_FILE", "Review", "ReviewedCluster", "StaleReview", "read_review", "run_review"]

REVIEW_FILE = "review.yaml"
AUDIT_JSON = "audit.json"

_HEADER = """\
# Review of a shortcut audit (ravl-med). Clusters are numbered by their rank, as in report.html,
# clusters.csv and the gallery files (gallery-cluster-<rank>.png).
# For each cluster, open its gallery and its counter-examples (counter_gallery: images of the same class
# that are not in the cluster; if they show the same thing, the cluster is not a distinct feature), then set
#   spurious: yes   the boxed regions show something that is not part of the disease (a device, a
#                   marker, burned-in text, a positioning aid): the model may use it as a shortcut;
#   spurious: no    they show anatomy or the finding itself.
# Then 'ravl-med mitigate --audit <this folder> ...' fine-tunes away the clusters marked yes.
# The same can be written with: ravl-med review <this folder> --spurious 1,3   (or --none)
"""


class StaleReview(ConfigError):
    """``review.yaml`` reviews another ``audit.json`` than the folder's (the audit was run again)."""


@dataclass(frozen=True)
class ReviewedCluster:
    """One kept cluster as the reviewer sees it.

    Attributes:
        rank: 1-based rank in the audit's report.
        tied_to: the class the audit tied the cluster to (``None``: none).
        regions, images: how many candidate regions / images the cluster holds.
        adjusted_p: Holm-adjusted permutation p-value of its accuracy gap (``None``: not computed).
        stability: share of half-sample refits that kept a matching cluster, 0-1 (``None``: not measured).
        gallery: the gallery file in the audit folder (``None``: not rendered).
        counter_gallery: the counter-example gallery file in the audit folder (``None``: none, see
            ``counter_note``).
        counter_note: one line on the counter-examples: how many the gallery shows, or why there is none.
        spurious: the reviewer's verdict; ``None`` until reviewed.
    """

    rank: int
    tied_to: str | None
    regions: int
    images: int
    adjusted_p: float | None
    stability: float | None
    gallery: str | None
    counter_gallery: str | None = None
    counter_note: str = ""
    spurious: bool | None = None


@dataclass(frozen=True)
class Review:
    """The reviewer's verdicts on one audit (``review.yaml``).

    Attributes:
        audit_dir: the audit folder.
        method: the audit's primary discovery method.
        outcome: the audit's outcome (``found`` when it kept clusters).
        audit_sha256: sha256 of the reviewed ``audit.json``.
        clusters: the kept clusters, by rank.
    """

    audit_dir: Path
    method: str
    outcome: str
    audit_sha256: str
    clusters: tuple[ReviewedCluster, ...]

    @property
    def spurious_ranks(self) -> list[int]:
        """Ranks marked ``yes``."""
        return [c.rank for c in self.clusters if c.spurious]

    @property
    def pending_ranks(self) -> list[int]:
        """Ranks not reviewed yet."""
        return [c.rank for c in self.clusters if c.spurious is None]

    def marked(self, spurious: Iterable[int]) -> Review:
        """A copy with exactly the clusters of these ranks ``yes`` and every other ``no``.

        Raises:
            ConfigError: a rank the audit did not keep.
        """
        chosen = set(spurious)
        unknown = sorted(chosen - {c.rank for c in self.clusters})
        if unknown:
            kept = ", ".join(str(c.rank) for c in self.clusters) or "none"
            raise ConfigError(f"--spurious: the audit kept no cluster of rank {', '.join(map(str, unknown))} "
                              f"(kept: {kept})")
        return replace(self, clusters=tuple(replace(c, spurious=c.rank in chosen) for c in self.clusters))

    def write(self) -> Path:
        """Writes ``review.yaml`` in the audit folder (atomically) and returns its path."""
        body = {
            "audit": {"method": self.method, "outcome": self.outcome, "sha256": self.audit_sha256},
            "clusters": [{"rank": c.rank, "tied_to": c.tied_to, "gallery": c.gallery,
                          "counter_gallery": c.counter_gallery, "counter_examples": c.counter_note,
                          "regions": c.regions, "images": c.images, "adjusted_p": c.adjusted_p,
                          "stability": c.stability, "spurious": c.spurious} for c in self.clusters],
        }
        path = self.audit_dir / REVIEW_FILE
        with atomic_path(path) as tmp:
            tmp.write_text(_HEADER + yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
        return path


def _audit(audit_dir: Path) -> tuple[dict, str]:
    """``audit.json`` of the folder and its sha256."""
    path = audit_dir / AUDIT_JSON
    if not path.is_file():
        raise ConfigError(f"{audit_dir}: no {AUDIT_JSON} here; give the output folder of 'ravl-med audit'")
    raw = path.read_bytes()
    try:
        audit = json.loads(raw)
        primary = audit["methods"][audit["primary_method"]]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not an audit written by ravl-med (unreadable or missing fields)") from None
    return {"primary": audit["primary_method"], "outcome": audit.get("outcome", primary.get("outcome")),
            "clusters": primary.get("ranked_clusters", [])}, hashlib.sha256(raw).hexdigest()


def _fresh(audit_dir: Path) -> Review:
    """An unreviewed review of the folder's audit."""
    audit, sha = _audit(audit_dir)
    clusters = []
    for cluster in audit["clusters"]:
        rank = int(cluster["rank"])
        gallery = f"gallery-cluster-{rank}.png"
        clusters.append(ReviewedCluster(
            rank=rank, tied_to=cluster.get("attribute_name"), regions=int(cluster["n_regions"]),
            images=int(cluster["n_images"]), adjusted_p=cluster.get("p_adjusted"), stability=cluster.get("stability"),
            gallery=gallery if (audit_dir / gallery).is_file() else None, **_counter(audit_dir, cluster)))
    return Review(audit_dir=audit_dir, method=audit["primary"], outcome=str(audit["outcome"]), audit_sha256=sha,
                  clusters=tuple(clusters))


def _counter(audit_dir: Path, cluster: dict) -> dict:
    """``counter_gallery`` and ``counter_note`` of one ``audit.json`` cluster (see ``stages.audit``)."""
    name, tied_to = cluster.get("counter_gallery"), cluster.get("attribute_name")
    if name and (audit_dir / name).is_file():
        shown = cluster.get("n_counter_gallery")
        return {"counter_gallery": name,
                "counter_note": f"{shown} region(s) of {tied_to} images outside the cluster, the most similar first"}
    if name:
        note = f"none: {name} is missing from the audit folder"
    elif "n_counter_gallery" not in cluster:
        note = "none: the audit recorded no counter-examples (written by an older ravl-med?)"
    elif tied_to is None:
        note = "none: the cluster is not tied to a class"
    else:  # counter_examples() found no image of the class outside the cluster
        note = f"none: every {tied_to} image has a region in this cluster, so there is no image to compare with"
    return {"counter_gallery": None, "counter_note": note}


def read_review(audit_dir: str | Path) -> Review | None:
    """The folder's ``review.yaml``, checked against its ``audit.json``; ``None`` when there is none.

    Raises:
        ConfigError: the file cannot be read, names ranks the audit does not have, or gives a verdict
            other than yes/no/null.
        StaleReview: it reviews another ``audit.json`` than the folder's.
    """
    audit_dir = Path(audit_dir)
    path = audit_dir / REVIEW_FILE
    if not path.is_file():
        return None
    fresh = _fresh(audit_dir)
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        sha = body["audit"]["sha256"]
        verdicts = {int(entry["rank"]): entry.get("spurious") for entry in body["clusters"] or []}
    except (yaml.YAMLError, KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: not a review file (expected 'audit:' and 'clusters:' with a rank and "
                          "spurious: yes/no per cluster; 'ravl-med review' writes one)") from None
    if sha != fresh.audit_sha256:
        raise StaleReview(f"{path} reviews another audit.json than the one in {audit_dir} (the audit was run "
                          "again?); review it again with 'ravl-med review'")
    if set(verdicts) != {c.rank for c in fresh.clusters}:
        raise ConfigError(f"{path}: ranks {sorted(verdicts)} do not match the audit's kept clusters "
                          f"{[c.rank for c in fresh.clusters]}")
    bad = {rank: v for rank, v in verdicts.items() if v is not None and not isinstance(v, bool)}
    if bad:
        rank, value = next(iter(bad.items()))
        raise ConfigError(f"{path}: cluster {rank}: spurious must be yes, no or null, not {value!r}")
    return replace(fresh, clusters=tuple(replace(c, spurious=verdicts[c.rank]) for c in fresh.clusters))


def run_review(audit_dir: str | Path, spurious: Iterable[int] | None = None) -> Review:
    """Writes (or updates) the folder's ``review.yaml`` and returns the review.

    Args:
        audit_dir: the output folder of ``ravl-med audit``.
        spurious: ranks to mark ``yes`` (every other kept cluster ``no``); ``[]`` marks none; ``None``
            keeps the verdicts already in the file, or starts an unreviewed file (also in place of a
            review of an earlier audit in the folder).

    Raises:
        ConfigError: no audit in the folder, an unreadable review file, or a rank the audit did not keep.
    """
    audit_dir = Path(audit_dir)
    review = None
    if spurious is None:
        try:
            review = read_review(audit_dir)
        except StaleReview:
            review = None  # verdicts on clusters that no longer exist: start again
    review = review or _fresh(audit_dir)
    if spurious is not None:
        review = review.marked(spurious)
    review.write()
    return review
