"""Free-text reports for phantom radiographs, phrased like real chest X-ray reports.

Sentence patterns are learned at run time from the Indiana University chest X-ray reports that
ship inside the ``torchxrayvision`` wheel (``data/NLMCXR_reports.tgz``, 3,955 reports, CC BY-NC-ND):
their sentences are sorted into topic pools (normal heart, clear lungs, "no effusion", "small left
pleural effusion", ...) and a report is assembled by sampling from the pools that fit the image.
Only sentences that recur across reports are used (frequent, templated phrasing; no rare
sentences that could carry details of one patient), and side words are checked against the
rendered finding. Without the archive a small built-in template set is used.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import tarfile
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["ReportWriter", "sentence_pools"]

logger = logging.getLogger(__name__)

TOPICS: dict[str, str] = {
    "cardiomegaly": r"\b(cardiomegaly|heart (size )?is (mildly |moderately |markedly )?enlarged|enlarged (heart|cardiac)|cardiac (silhouette|size) is (mildly |moderately )?enlarged)\b",
    "pleural effusion": r"\b(pleural )?effusions?\b",
    "pneumothorax": r"\bpneumothora(x|ces)\b",
    "nodule": r"\b(nodules?|mass(es)?|nodular)\b",
    "consolidation": r"\b(consolidations?|airspace (disease|opacit(y|ies))|infiltrates?|pneumonia)\b",
}
DEVICE_TOPICS: dict[str, str] = {
    "pacemaker": r"\b(pacemaker|pacer|icd|defibrillator|generator)\b",
    "chest_drain": r"\b(chest tube|drain|thoracostomy)\b",
    "ecg_leads": r"\b(ecg|ekg|monitoring|telemetry) (leads|wires|electrodes)\b",
}
NEGATION = re.compile(r"\b(no|without|negative|not|resolved|resolution|clear|free of|removed|normal)\b", re.I)
HEART_NORMAL = re.compile(r"\b(heart|cardiac|cardiomediastinal)\b.*\b(normal|within normal limits|unremarkable|stable)\b", re.I)
LUNGS_CLEAR = re.compile(r"\blungs? (are|is) (clear|well expanded|hyperexpanded and clear)\b", re.I)
ANY_TOPIC = re.compile("|".join([*TOPICS.values(), *DEVICE_TOPICS.values()]), re.I)
UNWANTED = re.compile(r"xxxx|\d|comparison|previous|prior|again|compared|interval|since|unchanged|stable|"
                      r"granuloma|calcifi|degenerative|spine|surgical|sternotomy|bone|osseous|atelecta|emphysema|"
                      r"copd|hernia|scoliosis|aort|tortuous|hilar|vascular", re.I)

FALLBACK: dict[str, list[str]] = {
    "normal_heart": ["The heart is normal in size.", "Heart size is normal.", "The cardiomediastinal silhouette is within normal limits."],
    "lungs_clear": ["The lungs are clear.", "Lungs are clear bilaterally.", "The lungs are well expanded and clear."],
    "no_acute": ["No acute cardiopulmonary abnormality.", "No acute cardiopulmonary disease.", "No active disease."],
    "neg:cardiomegaly": ["No cardiomegaly."],
    "neg:pleural effusion": ["No pleural effusion.", "There is no pleural effusion.", "No pleural effusions."],
    "neg:pneumothorax": ["No pneumothorax.", "There is no pneumothorax."],
    "neg:nodule": ["No suspicious pulmonary nodules.", "No nodules or masses."],
    "neg:consolidation": ["No focal consolidation.", "No focal airspace consolidation.", "No focal airspace disease."],
    "pos:cardiomegaly": ["The heart is enlarged.", "Cardiomegaly.", "Mild cardiomegaly.", "The cardiac silhouette is enlarged."],
    "pos:pleural effusion": ["{size} {side} pleural effusion.", "There is a {size} {side} pleural effusion.",
                             "Blunting of the {side} costophrenic angle consistent with a {size} effusion."],
    "pos:pneumothorax": ["{size} {side} pneumothorax.", "There is a {size} {side} apical pneumothorax.",
                         "{side} pneumothorax with visible pleural line."],
    "pos:nodule": ["{kind} in the {side} {zone} lung.", "There is a {zone} {side} lung {kind}.",
                   "Rounded opacity in the {side} {zone} zone, likely a {kind}."],
    "pos:consolidation": ["Focal consolidation in the {side} {zone} lung.", "{side} {zone} zone airspace consolidation.",
                          "Airspace opacity in the {side} {zone} lung, consistent with pneumonia."],
    "dev:pacemaker": ["{side} chest wall {kind} with leads in the heart.", "{side}-sided {kind} in place."],
    "dev:chest_drain": ["{side} chest tube in place.", "There is a {side} chest drain."],
    "dev:ecg_leads": ["ECG leads overlie the chest.", "Monitoring leads project over the chest."],
}


def _archive_path() -> Path | None:
    # Located without importing torchxrayvision (its import silences warnings process-wide).
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "NLMCXR_reports.tgz"
    return path if path.is_file() else None


def _report_sentences(path: Path) -> Counter:
    """Sentence counts over FINDINGS and IMPRESSION sections of every report in the archive."""
    pattern = re.compile(r'<AbstractText Label="(FINDINGS|IMPRESSION)">(.*?)</AbstractText>', re.S)
    counts: Counter = Counter()
    with tarfile.open(path) as archive:
        for member in archive:
            if not member.isfile() or not member.name.endswith(".xml"):
                continue
            text = archive.extractfile(member).read().decode("utf-8", "replace")
            for _, body in pattern.findall(text):
                for sentence in re.split(r"(?<=\.)\s+", " ".join(body.split())):
                    sentence = sentence.strip()
                    if 8 <= len(sentence) <= 90 and sentence.endswith("."):
                        counts[sentence[0].upper() + sentence[1:]] += 1
    return counts


@lru_cache(maxsize=1)
def sentence_pools(min_count: int = 3) -> dict[str, list[str]]:
    """Topic -> sentences, learned from the IU reports (see module docstring), else the fallback.

    Keys: ``normal_heart``, ``lungs_clear``, ``no_acute``, ``neg:<class>``, ``pos:<class>`` and
    ``dev:<artefact>``. ``pos:``/``dev:`` sentences may hold ``{side}``/``{size}`` slots.
    """
    pools = {k: list(v) for k, v in FALLBACK.items()}
    path = _archive_path()
    if path is None:
        logger.warning("torchxrayvision report archive not found; using built-in report templates")
        return pools
    try:
        counts = _report_sentences(path)
    except (OSError, tarfile.TarError) as err:
        logger.warning("cannot read %s (%s); using built-in report templates", path, err)
        return pools
    learned: dict[str, list[str]] = {k: [] for k in pools}
    for sentence, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if count < min_count or UNWANTED.search(sentence):
            continue
        topics = [t for t, rx in TOPICS.items() if re.search(rx, sentence, re.I)]
        negated = bool(NEGATION.search(sentence))
        if not topics and not re.search(r"\b(left|right)\b", sentence, re.I):
            if HEART_NORMAL.search(sentence) and not ANY_TOPIC.search(sentence) and "lung" not in sentence.lower():
                learned["normal_heart"].append(sentence)
            elif LUNGS_CLEAR.search(sentence) and not ANY_TOPIC.search(sentence):
                learned["lungs_clear"].append(sentence)
            elif re.search(r"\bno acute\b", sentence, re.I) and len(sentence) < 60:
                learned["no_acute"].append(sentence)
        elif len(topics) == 1 and negated and re.match(r"^(no|there is no|without)\b", sentence, re.I):
            learned[f"neg:{topics[0]}"].append(sentence)
        elif len(topics) == 1 and not negated and not re.search(r"\b(may|possible|question|versus|vs|cannot)\b", sentence, re.I):
            learned[f"pos:{topics[0]}"].append(_slot_sides(sentence))
    for key, sentences in learned.items():
        if len(sentences) >= 2:
            pools[key] = sentences[:40] + pools[key]  # learned phrasing first, templates kept for variety
    return pools


def _slot_sides(sentence: str) -> str:
    """Replaces side words with a ``{side}`` slot so the sentence can describe either side."""
    out = re.sub(r"\b(left|right|bilateral)\b", "{side}", sentence, flags=re.I)
    return re.sub(r"\b(small|moderate|large|tiny|trace)\b", "{size}", out, flags=re.I)


class ReportWriter:
    """Writes one report per phantom image.

    Args:
        device_mention: probability that an artefact which radiologists report (pacemaker, chest
            drain, ECG leads) is mentioned; markers, tokens and clips are never reported.
    """

    def __init__(self, device_mention: float = 0.5) -> None:
        self.pools = sentence_pools()
        self.device_mention = device_mention

    def _pick(self, rng: np.random.Generator, key: str, **slots) -> str:
        pool = self.pools.get(key) or FALLBACK[key]
        sentence = pool[int(rng.integers(len(pool)))]
        if ("{side}" in sentence or "{Side}" in sentence) and "side" not in slots:
            sentence = FALLBACK[key][0] if "{" not in FALLBACK[key][0] else sentence
        values = {k: str(v) for k, v in slots.items()}
        values.setdefault("side", "")
        values["Side"] = values["side"].capitalize()
        text = sentence.format_map(_Default(values))
        text = " ".join(text.split())
        return text[0].upper() + text[1:]

    def write(self, rng: np.random.Generator, label: str, finding: dict, artefact: str = "", artefact_details: dict | None = None) -> str:
        """The report text for an image of class ``label`` (finding details from the renderer)."""
        sentences: list[str] = []
        if label != "no finding":
            sentences.append(self._pick(rng, f"pos:{label}", **finding))
        if label != "cardiomegaly":
            sentences.append(self._pick(rng, "normal_heart"))
        others = [c for c in ("pleural effusion", "pneumothorax", "consolidation", "nodule") if c != label]
        for topic in rng.permutation(others)[: int(rng.integers(1, 3))]:
            sentences.append(self._pick(rng, f"neg:{topic}"))
        if label in ("no finding", "cardiomegaly") and rng.random() < 0.6:
            sentences.insert(1, self._pick(rng, "lungs_clear"))
        if artefact in DEVICE_TOPICS and rng.random() < self.device_mention:
            details = artefact_details or {}
            sentences.append(self._pick(rng, f"dev:{artefact}", side=details.get("side", ""), kind=details.get("kind", "pacemaker")))
        impression = self._pick(rng, "no_acute") if label == "no finding" else sentences[0]
        return "FINDINGS: " + " ".join(sentences) + " IMPRESSION: " + impression


class _Default(dict):
    def __missing__(self, key: str) -> str:
        return ""
