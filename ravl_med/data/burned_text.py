"""Burned-in text found in a radiograph's pixels, for when the DICOM header does not declare it.

DICOM's BurnedInAnnotation is often missing or wrong (PNG and JPEG exports have no header at all), so
the audit also looks at the pixels of the images its report shows. :func:`find_burned_in_text` looks
for lines of bright characters, the way modalities and exporters burn in names, dates, IDs and site
labels, with scikit-image morphology and no trained model:

1. bright strokes: a white top-hat with a k x k square (k odd, at least 7 px and half the tallest
   character looked for) keeps structures thinner than k (character strokes) and removes wider ones
   (bones, soft tissue);
2. ink: top-hat values of at least ``min_contrast`` grey levels and of ``ink_levels`` times the
   headroom above the local background (white text on a bright abdomen has little headroom, text on
   the black border all of it); each level is searched, because text touching bright anatomy comes
   apart from it only at the higher one;
3. marks: connected ink from ``min_height`` px to the tallest character looked for (``max_height`` of
   the longer side) tall and at most three such heights wide (a character, or a word whose characters
   merged at low resolution; rib edges and wires are longer);
4. rows: marks whose tops or bottoms align and whose heights match, at most one height apart
   (:func:`_rows_of_marks`);
5. a row is a text line when it holds at least three marks (or two spanning ``min_aspect`` heights),
   ink fills 10-80% of its box, its marks reach ``min_peak`` of the headroom (text is drawn at the
   display's white; mottled bright tissue is not) and ``min_snr`` times the local pixel noise (grain in
   bright, noisy areas is not), and its middle rows cross at least ``min_strokes`` strokes and
   ``min_strokes_per_height`` strokes per height of width (characters are about 0.6 heights wide with
   one to three vertical strokes; anatomy crossing a band of that height gives fewer).

By default only bright text is looked for: burned-in text is usually drawn at the display's white,
and dark gaps between lung vessels gave false alarms. ``dark=True`` also looks for dark text (drawn at
the display's black on a bright area) by the same steps and thresholds on the inverted image, its
headroom being the background's brightness; letterbox padding (exact zeros) stays out of the noise
estimate. It finds black text on bright areas (95% from 6 px) but flags more non-text artefacts of the
phantoms (BENCHMARKS.md), so it is off by default. Text under ``min_height`` px (4 by default) cannot be
read in the image as given and is not looked for: run the check on the pixels a reader will see (the audit runs it on
the ingested images its galleries show). Detection and false-alarm rates on real radiographs:
``benchmarks/burned_text_detection.py`` and BENCHMARKS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.morphology import footprint_rectangle, white_tophat

__all__ = ["BurnedInText", "TextLine", "at_stored_resolution", "find_burned_in_text"]


@dataclass(frozen=True)
class TextLine:
    """One line (or word) of text-like marks.

    Attributes:
        box: (x0, y0, x1, y1) in pixels of the checked image, exclusive ends (the region-box convention).
        strokes: strokes its middle rows cross (median over those rows).
    """

    box: tuple[int, int, int, int]
    strokes: float


@dataclass(frozen=True)
class BurnedInText:
    """What :func:`find_burned_in_text` found in one image.

    Attributes:
        lines: the text-like lines, top to bottom (empty: none).
        min_height, max_height: the character heights looked for, pixels.
    """

    lines: tuple[TextLine, ...]
    min_height: int
    max_height: int

    @property
    def found(self) -> bool:
        """Whether the image shows text-like lines."""
        return bool(self.lines)


class _LineTests(NamedTuple):
    """The thresholds of step 5 (see :func:`find_burned_in_text`)."""

    tallest: int
    min_aspect: float
    min_peak: float
    min_snr: float
    min_strokes: int
    min_strokes_per_height: float


def find_burned_in_text(image, *, min_height: int = 4, max_height: float = 0.1, min_contrast: float = 0.05,
                        ink_levels: tuple[float, ...] = (0.25, 0.5), min_peak: float = 0.6, min_snr: float = 15.0,
                        min_aspect: float = 2.5, min_strokes: int = 4,
                        min_strokes_per_height: float = 0.9, dark: bool = False) -> BurnedInText:
    """Lines of bright (and with ``dark``, dark) character-like marks in a radiograph (module docstring: the steps).

    Args:
        image: (H, W) grey image, float in [0, 1] (display orientation, white = dense) or uint8.
        min_height: smallest character height looked for, pixels.
        max_height: largest character height, as a fraction of the longer side.
        min_contrast: smallest stroke contrast above the local background, in [0, 1] grey levels.
        ink_levels: stroke contrast as a fraction of the headroom above the background; each is searched.
        min_peak: the median of a line's marks' highest contrast, as a fraction of the headroom, is at
            least this.
        min_snr: the median of its marks' highest top-hat value, in local noise standard deviations, is
            at least this.
        min_aspect: smallest width / height of a line of two marks.
        min_strokes: fewest strokes a line's middle rows cross.
        min_strokes_per_height: fewest strokes per height of the line's width.
        dark: also look for dark text on bright areas (the same steps and thresholds on ``1 - image``).

    Returns:
        :class:`BurnedInText`.

    Raises:
        ValueError: ``image`` is not 2-D.
    """
    pixels = np.asarray(image)
    if pixels.ndim != 2:
        raise ValueError(f"image must be (H, W), got shape {pixels.shape}")
    pixels = pixels.astype(np.float32) / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float32)
    tallest = max(min_height + 2, int(round(max_height * max(pixels.shape))))
    tests = _LineTests(tallest, min_aspect, min_peak, min_snr, min_strokes, min_strokes_per_height)
    image_pixels = pixels > 0  # letterbox padding (exact zeros) is not image
    lines: list[TextLine] = []
    for ink_side in (pixels, 1.0 - pixels) if dark else (pixels,):
        # A line found again (at another ink level, or a bright line's dark gaps) is the same line.
        lines += [line for line in _bright_lines(ink_side, image_pixels, min_height, min_contrast, ink_levels, tests)
                  if not any(_overlap(line.box, seen.box) for seen in lines)]
    lines.sort(key=lambda line: (line.box[1], line.box[0]))
    return BurnedInText(lines=tuple(lines), min_height=min_height, max_height=tallest)


def at_stored_resolution(image, stored_side: int) -> np.ndarray:
    """An ingested (S, S) image as the pixel check should see it: (S', S') float32, S' = min(S, stored_side).

    An image that ingestion enlarged (stored with a longer side below S) is scaled back down to its
    stored longer side by area averaging: upscaling shows no text the file does not hold, and its
    smoothed edges gave false alarms (2 of 48 phantoms stored at 128 px, checked at 224 px; none at 128 px).

    Args:
        image: (S, S) ingested image, float in [0, 1].
        stored_side: the longer side of the image as stored in its file, pixels.
    """
    import torch
    import torch.nn.functional as F

    pixels = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if stored_side < pixels.shape[-1]:
        pixels = F.interpolate(pixels[None, None], size=(stored_side, stored_side), mode="area")[0, 0]
    return pixels.numpy()


def _bright_lines(pixels: np.ndarray, image_pixels: np.ndarray, min_height: int, min_contrast: float,
                  ink_levels: tuple[float, ...], tests: _LineTests) -> list[TextLine]:
    """Steps 1-5 for bright ink on ``pixels`` (H, W) float32; ``image_pixels``: the pixels that are not padding."""
    tallest = tests.tallest
    side = max(7, (tallest // 2) | 1)
    tophat = white_tophat(pixels, footprint_rectangle((side, side), decomposition="separable"))
    # Stroke contrast as a share of the headroom above the local background (the opening).
    contrast = tophat / np.maximum(1.0 - (pixels - tophat), 1e-6)
    snr = tophat / _local_noise(pixels, (tophat >= min_contrast) & (contrast >= min(ink_levels)), 2 * tallest + 1,
                                image_pixels)
    lines: list[TextLine] = []
    for level in ink_levels:
        ink = (tophat >= min_contrast) & (contrast >= level)
        # A line found again at a higher level (same text, other box) is the same line.
        lines += [line for line in _text_lines(_rows_of_marks(ink, min_height, tallest), contrast, snr, tests)
                  if not any(_overlap(line.box, seen.box) for seen in lines)]
    return lines


def _rows_of_marks(ink: np.ndarray, min_height: int, tallest: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """The ink's marks (steps 3 and 4): character-sized connected ink, grouped in rows.

    Two marks join a row when their tops or their bottoms lie within 0.2 of the taller one's height
    (capitals and digits share both; a lowercase letter shares one with its neighbours), their centres
    within 0.3 of it, their heights within a factor 1.6, and the horizontal gap between them is at most
    that height (a word space, or a punctuation mark too small to be a mark).

    Returns:
        the (H, W) int label image of the ink, the (n, 4) boxes (x0, y0, x1, y1) of labels 1..n, and per
        row the labels of its marks.
    """
    labels, _ = ndimage.label(ink, structure=np.ones((3, 3), bool))
    boxes = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)],
                     dtype=np.int64).reshape(-1, 4)
    heights, widths = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    marks = np.flatnonzero((heights >= min_height) & (heights <= tallest) & (widths <= 3 * tallest))
    x0, y0, x1, y1 = boxes[marks].T
    h = (y1 - y0).astype(np.float64)
    centre = (y0 + y1) / 2.0
    order = np.argsort(x0, kind="stable")
    first, second = [], []
    for a, i in enumerate(order):  # by left edge: only marks starting at most `tallest` px after i ends can join it
        later = order[a + 1:np.searchsorted(x0[order], x1[i] + tallest, side="right")]
        taller = np.maximum(h[i], h[later])
        joined = ((np.minimum(np.abs(y0[later] - y0[i]), np.abs(y1[later] - y1[i])) <= 0.2 * taller)
                  & (np.abs(centre[later] - centre[i]) <= 0.3 * taller)
                  & (taller <= 1.6 * np.minimum(h[i], h[later])) & (x0[later] - x1[i] <= taller))
        first += [i] * int(joined.sum())
        second += later[joined].tolist()
    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(marks.size, marks.size))
    _, row = connected_components(graph, directed=False)
    return labels, boxes, [marks[row == r] + 1 for r in range(int(row.max()) + 1 if marks.size else 0)]


def _text_lines(rows: tuple[np.ndarray, np.ndarray, list[np.ndarray]], contrast: np.ndarray, snr: np.ndarray,
                tests: _LineTests) -> list[TextLine]:
    """The rows of marks (:func:`_rows_of_marks`) that pass the line tests (step 5)."""
    labels, boxes, members_of_rows = rows
    lines = []
    for members in members_of_rows:
        x0, y0 = boxes[members - 1, :2].min(axis=0)
        x1, y1 = boxes[members - 1, 2:].max(axis=0)
        height, width = int(y1 - y0), int(x1 - x0)
        if not (height <= tests.tallest and (members.size >= 3 or (members.size == 2
                                                                   and width >= tests.min_aspect * height))):
            continue
        window = labels[y0:y1, x0:x1]
        marks = np.isin(window, members)
        middle = marks[height // 4: height - height // 4]
        # Strokes crossed by each middle row: its runs of ink.
        strokes = float(np.median(np.sum(middle[:, 1:] & ~middle[:, :-1], axis=1) + middle[:, 0]))
        peak = float(np.median(ndimage.maximum(contrast[y0:y1, x0:x1], window, members)))
        above_noise = float(np.median(ndimage.maximum(snr[y0:y1, x0:x1], window, members)))
        if (0.1 <= marks.mean() <= 0.8 and peak >= tests.min_peak and above_noise >= tests.min_snr
                and strokes >= max(tests.min_strokes, tests.min_strokes_per_height * width / height)):
            lines.append(TextLine(box=(int(x0), int(y0), int(x1), int(y1)), strokes=strokes))
    return lines


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _local_noise(pixels: np.ndarray, ink: np.ndarray, window: int, image_pixels: np.ndarray) -> np.ndarray:
    """(H, W) standard deviation of the pixel noise around each pixel, from the pixels that are not ink.

    About sigma: 1.25 x the mean absolute difference from the 3 x 3 median (a Gaussian's mean absolute
    deviation is 0.8 sigma) over a ``window`` x ``window`` square; pixels outside ``image_pixels`` (letterbox
    padding) are left out.
    """
    residual = np.abs(pixels - ndimage.median_filter(pixels, size=3))
    quiet = (~ink & image_pixels).astype(np.float32)
    mean = ndimage.uniform_filter(residual * quiet, window) / np.maximum(ndimage.uniform_filter(quiet, window), 1e-6)
    return np.maximum(1.25 * mean, 1e-4)
