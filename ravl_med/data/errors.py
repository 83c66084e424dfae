"""The one error type of the ingestion path.

Every per-file problem (unreadable file, unsupported encoding, unusable pixels, bad manifest row)
is raised as :class:`IngestError` carrying a short machine-readable ``reason`` code, so callers can
quarantine the file and go on. The message never contains patient-identifying DICOM fields.
"""

from __future__ import annotations

__all__ = ["IngestError", "REASONS", "WARNINGS"]

#: Reason codes with a one-line explanation; quarantine files and summaries use these codes.
REASONS: dict[str, str] = {
    "missing_file": "the file does not exist or cannot be opened",
    "not_dicom": "the file is not DICOM (no preamble/meta and no readable data set)",
    "unsupported_format": "the file type is not one the loader reads (DICOM, PNG, JPEG, NIfTI)",
    "truncated": "the file ends before its declared content",
    "corrupt_header": "the DICOM header cannot be parsed (damaged tags or value lengths)",
    "no_pixel_data": "the data set has no pixel data",
    "unsupported_transfer_syntax": "no installed decoder handles the transfer syntax",
    "undecodable": "the pixel data could not be decoded",
    "multi_frame": "the object holds several frames; a radiograph has one",
    "volume": "the image is 3-D; a radiograph is 2-D",
    "colour": "the image has colour content where a grey radiograph is expected",
    "bad_size": "the image is smaller or larger than the allowed size range",
    "constant": "every pixel has the same value",
    "non_finite": "NaN or infinite values after the modality rescale",
    "unknown_label": "a manifest label is not one of the configured classes",
    "missing_label": "a manifest row has no label",
    "duplicate_path": "the manifest lists the same image twice",
    "bad_row": "a manifest row has an invalid value",
}

#: Codes for usable images that deserve a look; they are reported, not quarantined.
WARNINGS: dict[str, str] = {
    "unexpected_modality": "the DICOM modality is not one expected for chest radiographs",
    "burned_in_annotation": "the DICOM header says the pixels hold burned-in text (BurnedInAnnotation YES): names or "
                            "dates may show in gallery thumbnails; audit with report.crops_only: true",
    "burned_in_text": "names or dates may show in gallery thumbnails; look at the image, and audit with "
                      "report.crops_only: true if it holds text",
}


class IngestError(Exception):
    """A per-file ingestion failure with a reason code from :data:`REASONS`.

    Args:
        reason: one of the keys of :data:`REASONS`.
        detail: a short human-readable explanation (no patient identifiers).
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown ingestion reason {reason!r}; known: {sorted(REASONS)}")
        self.reason = reason
        self.detail = detail or REASONS[reason]
        super().__init__(f"{reason}: {self.detail}")
