"""Human-readable audit outputs: region galleries (PNG), the self-contained HTML report, the flat CSV.

Everything here works from the audit's JSON-ready dict (see :func:`ravl_med.stages.audit.run_audit`)
plus the pixels of the gallery images, so the report shows exactly what ``audit.json`` holds. Images
are referred to by their opaque manifest keys only; no path or DICOM header field is written.
"""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ravl_med.data.atomic import atomic_path

__all__ = [
    "BASELINE_FOUND_TEXT",
    "OUTCOME_TEXT",
    "GalleryTile",
    "gallery_size",
    "render_gallery",
    "write_clusters_csv",
    "write_report_html",
]

#: Plain-words meaning of each discovery outcome, for people who read the report.
OUTCOME_TEXT = {
    "found": "At least one image feature was found that the model ties to a class: it raises accuracy for "
             "that class and lowers it for another.",
    "no_structure": "The region embeddings showed no cluster structure (their clusters were no tighter than those "
                    "of the same embeddings with every coordinate shuffled), so no image feature could be singled "
                    "out. This is a legitimate result; it does not prove that the model is free of shortcuts.",
    "no_candidate": "No group of similar image regions helped one class while hurting another: no spurious "
                    "correlation was found with these images and classes.",
    "no_influential": "Some groups of image regions helped one class and hurt another, but none of them drove the "
                      "wrong predictions often enough to pass the influence threshold: nothing is reported as a "
                      "shortcut.",
    "not_significant": "Some groups of image regions went with higher accuracy for one class and lower for another, "
                       "but no difference was larger than chance produces (permutation test, corrected for the "
                       "number of groups tested): nothing is reported as a shortcut.",
    "unstable": "Some groups of image regions went with higher accuracy for one class and lower for another, "
                "beyond chance, but none of them came back reliably when the audit was repeated on random halves "
                "of the images (stability below the audit's min_stability; the notes give it): nothing is reported "
                "as a shortcut.",
    "too_few_regions": "There were too few image regions to cluster: nothing could be analysed.",
    "no_selection": "The method selected no group of images.",
    "too_little_data": "Too little data to conclude: the audited images cannot tell a shortcut from chance (the "
                       "reasons are listed). Whatever the methods found below is shown for inspection only.",
}

#: A baseline's "found" only means that it ranked groups; it applies no gap or influence filter.
BASELINE_FOUND_TEXT = ("This baseline ranked groups of regions. It does not test whether a group raises accuracy for "
                       "one class and lowers it for another; read the tables before drawing conclusions.")

_CAPTION_HEIGHT = 32  # two lines of 13 px text
_PAD = 6
_BOX_COLOUR = (230, 30, 30)


@dataclass
class GalleryTile:
    """One gallery tile: a whole image with a region box, and a caption.

    Attributes:
        image: (H, W) float array in [0, 1] (the ingested, model-ready image) or (H, W, 3) uint8.
        box: (x0, y0, x1, y1) in pixels of ``image`` (exclusive ends).
        caption: short text under the tile (rank, opaque key prefix, label / prediction).
    """

    image: np.ndarray
    box: Sequence[float]
    caption: str


def gallery_size(n_tiles: int, columns: int = 3, tile_size: int = 160, crops_only: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of a gallery of ``n_tiles`` tiles (see :func:`render_gallery`)."""
    n_tiles = max(int(n_tiles), 1)
    cols = min(columns, n_tiles)
    rows = math.ceil(n_tiles / cols)
    tile_w = _tile_width(tile_size, crops_only)
    tile_h = tile_size + _CAPTION_HEIGHT + 2 * _PAD
    return cols * tile_w, rows * tile_h


def _tile_width(tile_size: int, crops_only: bool) -> int:
    """A tile: the whole image and the enlarged region side by side, or the region alone (crops only)."""
    return tile_size + 2 * _PAD if crops_only else 2 * tile_size + 3 * _PAD


def _to_rgb(image: np.ndarray) -> Image.Image:
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # (C, H, W) -> (H, W, C)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float32), 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: float, lines: int = 2) -> str:
    """``text`` broken at spaces into at most ``lines`` lines of at most ``width`` pixels; an ellipsis ends a cut."""
    out: list[str] = []
    words = text.split()
    while words and len(out) < lines:
        line = words.pop(0)
        while words and draw.textlength(f"{line} {words[0]}", font=font) <= width:
            line = f"{line} {words.pop(0)}"
        out.append(line)
    if words:
        last = out[-1]
        while last and draw.textlength(last + " ...", font=font) > width:
            last = last[:-1]
        out[-1] = last + " ..."
    return "\n".join(out)


def render_gallery(tiles: Sequence[GalleryTile], path: str | Path, columns: int = 3, tile_size: int = 160,
                   crops_only: bool = False) -> Path:
    """Writes a PNG grid of tiles: left the whole image (thumbnail) with the box drawn, right the region zoomed.

    Args:
        tiles: the regions to show, best first (an empty list gives a blank one-tile image).
        path: destination PNG (written atomically).
        columns: tiles per row.
        tile_size: side of each panel, pixels.
        crops_only: show only the zoomed regions (no pixel outside a box reaches the gallery).

    Returns:
        the path. Its size is :func:`gallery_size` ``(len(tiles), columns, tile_size, crops_only)``.
    """
    width, height = gallery_size(len(tiles), columns, tile_size, crops_only)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=13)  # Pillow >= 10.1: a scalable font, easier to read
    except TypeError:
        font = ImageFont.load_default()
    cols = min(columns, max(len(tiles), 1))
    tile_w = _tile_width(tile_size, crops_only)
    tile_h = tile_size + _CAPTION_HEIGHT + 2 * _PAD
    for i, tile in enumerate(tiles):
        ox, oy = (i % cols) * tile_w, (i // cols) * tile_h
        image = _to_rgb(tile.image)
        w, h = image.size
        x0, y0, x1, y1 = (float(v) for v in tile.box)
        x0, x1 = max(0.0, min(x0, w)), max(0.0, min(x1, w))
        y0, y1 = max(0.0, min(y0, h)), max(0.0, min(y1, h))
        if not crops_only:
            # Thumbnail: the whole image scaled to the panel, box drawn at the thumbnail's scale.
            scale = tile_size / max(w, h)
            thumb = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
            canvas.paste(thumb, (ox + _PAD, oy + _PAD))
            draw.rectangle([ox + _PAD + x0 * scale, oy + _PAD + y0 * scale,
                            ox + _PAD + max(x0 * scale, x1 * scale - 1), oy + _PAD + max(y0 * scale, y1 * scale - 1)],
                           outline=_BOX_COLOUR, width=2)
        # Zoom: the region itself, nearest-neighbour so that small features keep their edges.
        crop_box = (math.floor(x0), math.floor(y0), max(math.ceil(x1), math.floor(x0) + 1),
                    max(math.ceil(y1), math.floor(y0) + 1))
        crop = image.crop(crop_box)
        cw, ch = crop.size
        zoom = tile_size / max(cw, ch)
        crop = crop.resize((max(1, round(cw * zoom)), max(1, round(ch * zoom))), Image.Resampling.NEAREST)
        zx = ox + _PAD if crops_only else ox + 2 * _PAD + tile_size
        canvas.paste(crop, (zx, oy + _PAD))
        draw.rectangle([zx, oy + _PAD, zx + crop.size[0] - 1, oy + _PAD + crop.size[1] - 1], outline=_BOX_COLOUR)
        draw.multiline_text((ox + _PAD, oy + _PAD + tile_size + 2), _wrap(tile.caption, draw, font, tile_w - 2 * _PAD),
                            fill=(0, 0, 0), font=font, spacing=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


# --------------------------------------------------------------------------------------------- #
# CSV


CSV_COLUMNS = (
    "method", "rank", "attribute", "score", "gap_score", "influence", "p_value", "p_adjusted", "stability",
    "n_regions", "n_images", "precision_at_k", "class", "n_in", "n_out", "acc_in", "acc_in_low", "acc_in_high", "acc_out", "acc_out_low",
    "acc_out_high", "gap", "gap_low", "gap_high", "class_influence", "skipped",
)


def _ci(value, index: int):
    return None if value is None else value[index]


def write_clusters_csv(audit: dict, path: str | Path) -> Path:
    """One row per (method, ranked cluster, class): the per-class tables of every method, flat."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for name, method in audit["methods"].items():
            for cluster in method["ranked_clusters"]:
                for row in cluster["table"]:
                    writer.writerow({
                        "method": name, "rank": cluster["rank"],
                        "attribute": cluster["attribute_name"], "score": cluster["score"],
                        "gap_score": cluster["gap_score"], "influence": cluster["influence"],
                        "p_value": cluster.get("p_value"), "p_adjusted": cluster.get("p_adjusted"),
                        "stability": cluster.get("stability"), "n_regions": cluster["n_regions"], "n_images": cluster["n_images"],
                        "precision_at_k": cluster.get("precision_at_k"), "class": row["class_name"],
                        "n_in": row["n_in"], "n_out": row["n_out"], "acc_in": row["acc_in"],
                        "acc_in_low": _ci(row["acc_in_ci"], 0), "acc_in_high": _ci(row["acc_in_ci"], 1),
                        "acc_out": row["acc_out"], "acc_out_low": _ci(row["acc_out_ci"], 0),
                        "acc_out_high": _ci(row["acc_out_ci"], 1), "gap": row["gap"],
                        "gap_low": _ci(row["gap_ci"], 0), "gap_high": _ci(row["gap_ci"], 1),
                        "class_influence": row["influence"], "skipped": row["skipped"],
                    })
    return path


# --------------------------------------------------------------------------------------------- #
# HTML

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.6em} .meta{color:#555;font-size:.9em}
.summary{background:#f4f7fb;border-left:4px solid #2d6cdf;padding:.8em 1.2em;margin:1em 0}
.warning{background:#fdecea;border-left:4px solid #b00020;padding:.6em 1.2em}
.finding{background:#fff6f0;border-left:4px solid #e06c1e;padding:.6em 1.2em;margin:.8em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right} th{background:#eee} td.l,th.l{text-align:left} .hurt{color:#b00020} .help{color:#006b2b}
.muted{color:#777} img.gallery{max-width:100%;border:1px solid #ddd} ul.notes li{margin:.2em 0}
details{margin:.6em 0;border:1px solid #ddd;padding:.4em .8em} summary{cursor:pointer;font-weight:600}
dl.glossary dt{font-weight:600;margin-top:.5em} dl.glossary dd{margin-left:1.5em}
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _pct_ci(value, ci) -> str:
    if value is None:
        return "n/a"
    if ci is None:
        return _pct(value)
    return f"{_pct(value)} <span class='muted'>({100 * ci[0]:.0f}&ndash;{100 * ci[1]:.0f})</span>"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _cluster_sentence(cluster: dict) -> str:
    """Plain words: which class the feature is tied to, how strongly, on how many images."""
    rows = cluster["table"]
    attribute = cluster["attribute_name"]
    helped = next((r for r in rows if r["class_name"] == attribute), None)
    hurt = [r for r in rows if r["gap"] is not None and r["gap"] < 0]
    if attribute is None:
        return (f"Cluster {cluster['rank']} ({cluster['n_regions']} regions in {cluster['n_images']} images) cannot "
                "be tied to a class: for every class, either all or none of its images have a region in it.")
    parts = [(f"The feature in cluster {cluster['rank']} ({cluster['n_regions']} regions in "
             f"{cluster['n_images']} images) is tied to <b>{_e(attribute)}</b>.")]
    if helped is not None and helped["acc_in"] is not None and helped["acc_out"] is not None:
        parts.append(
            f"Images of {_e(attribute)} that contain it are classified correctly {_pct(helped['acc_in'])} of the time "
            f"({helped['n_in']} images) against {_pct(helped['acc_out'])} for those without it "
            f"({helped['n_out']} images).")
    for row in hurt:
        parts.append(
            f"For <b>{_e(row['class_name'])}</b> the feature goes with lower accuracy: {_pct(row['acc_in'])} with it "
            f"({row['n_in']} images) against {_pct(row['acc_out'])} without ({row['n_out']} images).")
    if cluster.get("influence") is not None:
        parts.append(
            f"Influence {_pct(cluster['influence'])}: of the misclassified images of a hurt class that contain the "
            "feature, this share had it as the region that most favoured the wrong answer.")
    if cluster.get("p_adjusted") is not None:
        parts.append(f"A gap this large arises by chance with probability {_p(cluster['p_adjusted'])} "
                     "(permutation test, corrected for the number of clusters tested).")
    if cluster.get("stability") is not None:
        stability = cluster["stability"]
        parts.append(f"Stability {_pct(stability)}: refitted on random halves of the images, the audit found this "
                     "cluster again that often." + (" <b>Unstable</b>: found again in fewer than half of the refits; "
                                                    "treat it with caution." if stability < 0.5 else ""))
    return " ".join(parts)


def _p(value: float) -> str:
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _class_table(cluster: dict) -> str:
    head = ("<tr><th class='l'>class</th><th>images with feature</th><th>accuracy with (95% CI)</th>"
            "<th>images without</th><th>accuracy without (95% CI)</th><th>weighted gap (95% CI)</th>"
            "<th>influence</th><th class='l'>note</th></tr>")
    body = []
    for row in cluster["table"]:
        gap = row["gap"]
        css = "" if gap is None else ("help" if gap > 0 else "hurt" if gap < 0 else "")
        gap_text = "n/a" if gap is None else (
            f"{gap:+.3f}" + ("" if row["gap_ci"] is None else
                             f" <span class='muted'>({row['gap_ci'][0]:+.3f} to {row['gap_ci'][1]:+.3f})</span>"))
        body.append(
            f"<tr><td class='l'>{_e(row['class_name'])}</td><td>{row['n_in']}</td>"
            f"<td>{_pct_ci(row['acc_in'], row['acc_in_ci'])}</td><td>{row['n_out']}</td>"
            f"<td>{_pct_ci(row['acc_out'], row['acc_out_ci'])}</td><td class='{css}'>{gap_text}</td>"
            f"<td>{_pct(row['influence'])}</td><td class='l'>{_e(row['skipped'])}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _method_section(name: str, method: dict, galleries: dict, counter_galleries: dict, k: int) -> str:
    meaning = OUTCOME_TEXT.get(method["outcome"], "")
    if method["outcome"] == "found" and method["method"] != "RaVLDiscoverer":
        meaning = BASELINE_FOUND_TEXT
    out = [f"<h2 id='method-{_e(name)}'>{_e(name)} <span class='meta'>({_e(method['method'])})</span></h2>",
           f"<p><b>Outcome:</b> {_e(method['outcome'])} &mdash; {_e(meaning)}</p>"]
    if method.get("precision_at_k") is not None:
        out.append(f"<p><b>Precision@{k}</b> against the ground truth: {method['precision_at_k']:.2f} "
                   f"(top-ranked cluster; see <a href='#glossary'>Precision@k</a>).</p>")
    if method["notes"]:
        out.append("<ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in method["notes"]) + "</ul>")
    for cluster in method["ranked_clusters"]:
        tied = ("not tied to a class" if cluster["attribute_name"] is None
                else f"tied to &ldquo;{_e(cluster['attribute_name'])}&rdquo;")
        out.append(f"<h3>{_e(name)} cluster {cluster['rank']}: {tied}</h3>")
        extras = [f"ranking score {_num(cluster['score'])}", f"summed gap G {_num(cluster['gap_score'])}",
                  f"influence {_pct(cluster['influence'])}", f"{cluster['n_regions']} regions",
                  f"{cluster['n_images']} images"]
        if cluster.get("p_adjusted") is not None:
            extras.append(f"adjusted p {_p(cluster['p_adjusted'])}")
        if cluster.get("stability") is not None:
            extras.append(f"stability {_pct(cluster['stability'])}")
        if cluster.get("precision_at_k") is not None:
            extras.append(f"Precision@{k} {cluster['precision_at_k']:.2f}")
        out.append(f"<p class='meta'>{' &middot; '.join(extras)}</p>")
        out.append(f"<p>{_cluster_sentence(cluster)}</p>")
        out.append(_class_table(cluster))
        gallery = galleries.get((name, cluster["rank"]))
        if gallery is not None:
            out.append(f"<p class='meta'>The {cluster.get('n_gallery', '')} regions most typical of this cluster, "
                       "at most one per image until every image has one (overlapping boxes of one image do not "
                       "fill the list): left, the whole image with the region boxed in red; right, the region "
                       "enlarged.</p>")
            out.append(f"<img class='gallery' alt='regions of {_e(name)} cluster {cluster['rank']}' "
                       f"src='{_png_data_uri(gallery)}'>")
        if "counter_gallery" in cluster:  # the primary method's clusters
            out.append(_counter_gallery(name, cluster, counter_galleries.get((name, cluster["rank"]))))
    return "\n".join(out)


def _counter_gallery(name: str, cluster: dict, gallery: Path | None) -> str:
    """The cluster's counter-examples under its gallery, or one line on why there are none."""
    attribute = cluster["attribute_name"]
    if attribute is None:
        return "<p class='meta'>No counter-examples: the cluster is not tied to a class.</p>"
    if gallery is None:
        return (f"<p class='meta'>No counter-examples: every {_e(attribute)} image has a region in this cluster, so "
                "there is no image of the class without it to compare with.</p>")
    return (f"<p class='meta'>Counter-examples: regions of {_e(attribute)} images that the audit did not put in this "
            "cluster, the most similar ones first: if they show the same thing, the cluster is not a distinct "
            "feature.</p>"
            f"<img class='gallery' alt='counter-examples of {_e(name)} cluster {cluster['rank']}' "
            f"src='{_png_data_uri(gallery)}'>")


def _attributes_section(audit: dict) -> str:
    """Accuracy per value of each known subgroup attribute of the manifest (site, device, view, ...)."""
    info = audit.get("attributes") or {}
    rows = info.get("by_value") or []
    if not rows:
        return ""
    spread = {r["attribute"]: r for r in info.get("spread") or []}
    out = ["<h2 id='attributes'>Known attributes</h2>",
           "<p>Zero-shot accuracy for each value of the subgroup columns the manifest carries. A value with much "
           "lower accuracy than another may point to a shortcut tied to it (a site's text marker, a device's "
           "look). Values with fewer than " f"{info.get('min_count', 20)} images are shown but not compared.</p>"]
    for name in dict.fromkeys(r["attribute"] for r in rows):
        body = "".join(f"<tr><td class='l'>{_e(r['value'])}</td><td>{r['count']}</td>"
                       f"<td>{_pct_ci(r['accuracy'], None if r['ci_low'] is None else (r['ci_low'], r['ci_high']))}"
                       "</td></tr>" for r in rows if r["attribute"] == name)
        out.append(f"<h3>{_e(name)}</h3><table><tr><th class='l'>value</th><th>images</th>"
                   f"<th>accuracy (95% CI)</th></tr>{body}</table>")
        if name in spread:
            out.append(f"<p class='meta'>{_e(_spread_sentence(spread[name]))}</p>")
    return "\n".join(out)


def _spread_sentence(row: dict) -> str:
    verdict = ("the 95% intervals do not overlap: a real difference" if row["separated"]
               else "the 95% intervals overlap: no clear difference")
    return (f"{row['attribute']}: accuracy {_pct(row['best_accuracy'])} for {row['best_value']} ({row['best_count']} "
            f"images) vs {_pct(row['worst_accuracy'])} for {row['worst_value']} ({row['worst_count']} images); "
            f"{verdict}.")


def _hit_rule(gt: dict) -> str:
    """How a region counts as holding the planted feature, in words."""
    if gt.get("kind") != "mask":
        return f"A region counts as a hit by the rule: {gt.get('rule')}."
    if gt.get("rule") == "visible":
        return (f"A region counts as a hit when a reviewer would see the feature in it (rule visible): the length of "
                f"the feature inside the box, or the side of the patch it covers, is at least {gt['threshold']:.2f} "
                "times the box side.")
    return (f"A region counts as a hit under rule {gt.get('rule')} with threshold {gt.get('threshold')} "
            "(overlap of the box and the feature's mask).")


def _glossary(audit: dict) -> str:
    """Every symbol and number of the report, in words."""
    k = audit["config"]["evaluation"]["precision_k"]
    terms = [
        ("cluster", "a group of candidate image regions (boxes) that the model embeds alike; numbered by rank, best "
                    "first, as in clusters.csv and the gallery files."),
        ("tied to a class", "the class whose accuracy the cluster's feature raises most (largest positive gap)."),
        ("images with / without feature", "images of a class with at least one region in the cluster / with none."),
        ("counter-examples", "for each image of the cluster's class without the feature, its region most similar to "
                             "the cluster's medoid (the region at its centre; a baseline's top-ranked region); the "
                             "most similar of these images are shown under the cluster's gallery."),
        ("accuracy with / without", "share of those images the model classifies correctly (zero-shot), with a 95% "
                                    "bootstrap interval."),
        ("weighted gap", "accuracy with minus accuracy without, times the share of the class's images that have the "
                         "feature; positive (green): the feature helps the class, negative (red): it hurts it."),
        ("summed gap G", "the sum over classes of the absolute weighted gaps: how strongly the cluster moves accuracy. "
                         "RaVL ranks kept clusters by it (ranking score; baselines use their own score)."),
        ("influence", "of the misclassified images of a hurt class that contain the feature, the share in which this "
                      "region was the one that most favoured the wrong class. A cluster is kept only with influence "
                      ">= 25% (as RaVL does)."),
        ("adjusted p", "the chance of a weighted-gap pattern this strong when which images the model got right is "
                       "shuffled within each class (9,999 permutations), corrected for the number of clusters tested "
                       "(Holm). Kept clusters need <= 0.01."),
        ("stability", "the share of 20 refits on random halves of the images that find a matching cluster again "
                      "(sharing >= 50% of its regions). Below 50%: unstable."),
        (f"Precision@{k}", f"phantom or synthetic data only: the share of the cluster's top {k} regions (at most one "
                           "per image) that hold the planted feature."),
        ("no gap", "a class with no image in (or none outside) the cluster has no accuracy difference to measure."),
    ]
    rows = "".join(f"<dt>{_e(t)}</dt><dd>{_e(d)}</dd>" for t, d in terms)
    return f"<h2 id='glossary'>Glossary</h2><dl class='glossary'>{rows}</dl>"


def _summary(audit: dict) -> str:
    primary_name = audit["primary_method"]
    primary = audit["methods"][primary_name]
    data = audit["dataset"]
    lines = []
    burned = audit.get("burned_in_annotation") or {}
    if burned.get("gallery_images") and not burned.get("crops_only"):
        sources = []
        if burned["dicom_attribute"]:
            sources.append(f"{burned['dicom_attribute']} by the DICOM attribute (BurnedInAnnotation YES)")
        if burned["pixel_check"]:
            sources.append(f"{burned['pixel_check']} by the pixel check (lines of text-like marks)")
        lines.append(f"<p class='warning'><b>Warning: burned-in text.</b> {burned['gallery_images']} image(s) shown "
                     f"in the galleries may hold burned-in text, flagged {' and '.join(sources)}: names or dates may "
                     "be visible in their thumbnails. Do not share this report outside the care team, or audit again "
                     "with <code>report: {crops_only: true}</code>, which shows only the regions.</p>")
    lines += [(f"<p>{data['n_images']} images of the <b>{_e(data['split'] or 'whole')}</b> split were audited "
             f"({', '.join(f'{_e(c)}: {n}' for c, n in data['images_per_class'].items())}), "
             f"{data['n_regions']} candidate regions in all. Zero-shot accuracy of the model on them: "
             f"{_pct(audit['zero_shot']['accuracy'])}.</p>")]
    outcome = audit.get("outcome", primary["outcome"])
    lines.append(f"<p><b>Result ({_e(primary_name)}):</b> {_e(OUTCOME_TEXT.get(outcome, outcome))}</p>")
    if audit.get("too_little_data"):
        lines.append("<ul class='notes'>" + "".join(f"<li>{_e(r)}</li>" for r in audit["too_little_data"]) + "</ul>")
    if primary["ranked_clusters"]:
        for cluster in primary["ranked_clusters"][:3]:
            lines.append(f"<div class='finding'>{_cluster_sentence(cluster)}</div>")
        more = len(primary["ranked_clusters"]) - 3
        if more > 0:
            lines.append(f"<p>{more} more cluster(s) are listed below.</p>")
        lines.append(
            "<p>How to read this: <i>accuracy with the feature</i> is the share of images of a class, among those "
            "with at least one region in the cluster, that the model classifies correctly; <i>without</i> is the same "
            "for images of the class with no such region. A feature that is not part of the disease (a device, a "
            "marker, text, a positioning aid) but raises accuracy for one class and lowers it for another is a "
            "shortcut: check the galleries to see what it is (every term: <a href='#glossary'>glossary</a>). "
            "The 95% intervals come from a bootstrap; wide "
            "intervals mean few images.</p>")
    else:
        lines.append("<p>No cluster is reported. The notes below say why.</p>")
    if audit.get("ground_truth"):
        gt = audit["ground_truth"]
        rows = "".join(
            f"<tr><td class='l'>{_e(n)}</td><td class='l'>{_e(m['outcome'])}</td>"
            f"<td>{_num(m.get('precision_at_k'), 2)}</td></tr>" for n, m in audit["methods"].items())
        lines.append(f"<p>Ground truth ({_e(gt['kind'])}, {gt['n_spurious_regions']} of {data['n_regions']} regions "
                     f"hold the planted feature):</p><table><tr><th class='l'>method</th><th class='l'>outcome</th>"
                     f"<th>Precision@{gt['k']}</th></tr>{rows}</table><p class='meta'>{_e(_hit_rule(gt))}</p>")
        low = primary.get("precision_at_k")
        if primary["ranked_clusters"] and low is not None and low < 0.5:
            lines.append(f"<p><b>Why the precision may disagree with the gallery:</b> {_e(primary_name)}'s top "
                         f"cluster scores Precision@{gt['k']} {low:.2f}. Its first {gt['k']} gallery crops are the "
                         "regions scored; a crop that shows only a short piece of the feature, or shows it next to "
                         "the box, counts as a miss under this rule even when the feature is visible nearby. Look at "
                         "the gallery before concluding that the audit missed it.</p>")
    separated = [r for r in (audit.get("attributes") or {}).get("spread") or [] if r["separated"]]
    for row in separated:
        lines.append(f"<p><b>Known attribute:</b> {_e(_spread_sentence(row))} See "
                     "<a href='#attributes'>Known attributes</a>.</p>")
    if audit["notes"]:
        lines.append("<p>Notes:</p><ul class='notes'>" + "".join(f"<li>{_e(n)}</li>" for n in audit["notes"]) + "</ul>")
    return "<div class='summary'><h2 style='margin-top:0;border:0'>Summary</h2>" + "\n".join(lines) + "</div>"


def _next_step(audit: dict) -> str:
    """The last section: how a reviewer marks the shortcuts and starts mitigation (clusters named by rank)."""
    primary = audit["methods"][audit["primary_method"]]
    if not primary["ranked_clusters"]:
        return ("<h2>Next step</h2><p>The audit reports no shortcut, so there is nothing to mitigate: "
                "<code>ravl-med mitigate</code> refuses to fine-tune on this audit unless forced, because fine-tuning "
                "a model that has no shortcut lowered its worst-group accuracy in the project's benchmark.</p>")
    ranks = ", ".join(str(c["rank"]) for c in primary["ranked_clusters"])
    return f"""<h2>Next step: review, then mitigate</h2>
<p>Clusters are numbered by rank ({_e(ranks)}) here, in <code>clusters.csv</code> (column <code>rank</code>) and in
the gallery files (<code>gallery-cluster-&lt;rank&gt;.png</code>). For each cluster, look at its gallery: is the
boxed region something that is not part of the disease (a device, a marker, burned-in text, a positioning aid)? Then
look at its counter-examples (<code>gallery-cluster-&lt;rank&gt;-counter.png</code>): if they show the same thing,
the cluster is not a distinct feature.</p>
<ol>
<li>Mark the shortcuts, e.g. clusters 1 and 3: <code>ravl-med review AUDIT_DIR --spurious 1,3</code>
(<code>--none</code> if no cluster is one). This writes <code>review.yaml</code> in the audit folder; it can also be
edited by hand (<code>spurious: yes</code> or <code>no</code> per cluster). <code>ravl-med review AUDIT_DIR</code>
alone lists the clusters.</li>
<li>Fine-tune the shortcut away: <code>ravl-med mitigate --config CONFIG --audit AUDIT_DIR</code>. It reads
<code>review.yaml</code>, refuses a review not finished, and without one treats cluster 1 as the shortcut.</li>
</ol>
<p class="meta">AUDIT_DIR is the folder this report is in.</p>"""


def write_report_html(audit: dict, galleries: dict, counter_galleries: dict, path: str | Path) -> Path:
    """Writes the self-contained HTML report (galleries embedded as data URIs; no external resource).

    Args:
        audit: the audit dict (as written to ``audit.json``).
        galleries: ``{(method, rank): PNG path}``.
        counter_galleries: ``{(method, rank): PNG path}`` of the counter-example galleries (primary method).
        path: destination file.
    """
    model = audit["model"]
    k = audit["config"]["evaluation"]["precision_k"]
    primary = audit["primary_method"]
    sections = [_method_section(primary, audit["methods"][primary], galleries, counter_galleries, k),
                _attributes_section(audit)]
    baselines = [name for name in audit["methods"] if name != primary]
    if baselines:
        sections.append("<h2>Baselines</h2><p class='meta'>The same regions ranked by other discovery methods, for "
                        "comparison; open a method to see its clusters.</p>")
        sections += [f"<details><summary>{_e(name)} (outcome {_e(audit['methods'][name]['outcome'])})</summary>"
                     f"{_method_section(name, audit['methods'][name], galleries, counter_galleries, k)}</details>"
                     for name in baselines]
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Shortcut audit: {_e(model['backbone'])}</title><style>{_STYLE}</style></head>
<body>
<h1>Shortcut audit of a chest X-ray vision-language model</h1>
<p class="meta">Backbone {_e(model['backbone'])} &middot; weights sha256 {_e(model['sha256'] or 'not given')}
&middot; classes {_e(', '.join(audit['dataset']['classes']))} &middot; region mode {_e(audit['config']['region_mode'])}
&middot; ravl-med {_e(audit['version'])}</p>
{_summary(audit)}
{''.join(sections)}
{_next_step(audit)}
{_glossary(audit)}
<h2>About this report</h2>
<p class="meta">Method: RaVL stage 1 (Varma et al., NeurIPS 2024): candidate image regions are embedded with the
model, clustered, and each cluster is scored by how much it raises accuracy for one class and lowers it for
another (weighted gap) and by how often it is the region that drove a wrong prediction (influence). Images are
named by opaque keys only; the report holds no patient identifiers. The same content is in audit.json and
clusters.csv.</p>
</body></html>
"""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(document, encoding="utf-8")
    return path
