"""One phantom radiograph: anatomy + finding + optional artefact + detector, with every mask.

:func:`render_phantom` is a pure function of its arguments: the same seed gives byte-identical
pixels and masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ravl_med.phantom.anatomy import (
    DEVICES,
    Device,
    add_detector_noise,
    expose,
    render_density,
    sample_patient,
)
from ravl_med.phantom.artefacts import Artefact, Layout, get_artefact
from ravl_med.phantom.findings import get_finding
from ravl_med.phantom.inject import InjectArtefact

__all__ = ["SITES", "PhantomImage", "render_phantom"]

#: Simulated hospitals; each has its own device mix (index into ``DEVICES``) and share of AP films.
SITES: dict[str, tuple[tuple[float, ...], float]] = {
    "site-a": ((0.6, 0.1, 0.2, 0.1), 0.15),
    "site-b": ((0.1, 0.6, 0.2, 0.1), 0.25),
    "site-c": ((0.1, 0.1, 0.3, 0.5), 0.4),
}


@dataclass
class PhantomImage:
    """A rendered phantom.

    Attributes:
        image: float32 (H, W) display values in [0, 1] (MONOCHROME2, radiological orientation).
        finding_mask, artefact_mask, lung_mask: bool (H, W).
        label: the class.
        artefact: artefact name, ``""`` when none was injected.
        device: the :class:`Device`.
        site, view_position, sex, age_band: subgroup attributes.
        details: finding and artefact details (side, size, text, ...), for reports and metadata.
    """

    image: np.ndarray
    finding_mask: np.ndarray
    artefact_mask: np.ndarray
    lung_mask: np.ndarray
    label: str
    artefact: str
    device: Device
    site: str
    view_position: str
    sex: str
    age_band: str
    details: dict = field(default_factory=dict)


def render_phantom(
    seed: int | np.random.SeedSequence | tuple[int, ...],
    label: str,
    artefact: Artefact | str | None = None,
    size: int = 256,
    site: str | None = None,
) -> PhantomImage:
    """Renders one phantom radiograph.

    Args:
        seed: seed (or seed tuple) of this image's generator.
        label: the finding class (see :data:`~ravl_med.phantom.findings.CLASSES`).
        artefact: artefact to inject (instance, or name or import string, see ``get_artefact``); ``None``: none.
        size: image side in pixels (square image).
        site: simulated site; ``None`` draws one.

    Returns:
        the :class:`PhantomImage`.
    """
    rng = np.random.default_rng(seed)
    site = site or str(rng.choice(list(SITES)))
    device_probs, ap_share = SITES[site]
    device = DEVICES[int(rng.choice(len(DEVICES), p=device_probs))]
    view = "AP" if (device.name == "dx-portable" or rng.random() < ap_share) else "PA"
    patient = sample_patient(rng)
    finding = get_finding(label)
    details = finding.prepare(patient, rng)
    shape = (size, size)
    density = render_density(patient, shape, rng)
    result = finding.apply(density, rng, details)
    image = expose(density.total, device, rng)
    artefact_mask = np.zeros(shape, dtype=bool)
    artefact_name = ""
    art_details: dict = {}
    if artefact is not None:
        art = get_artefact(artefact) if isinstance(artefact, str) else artefact
        layout = Layout(
            lungs=density.lung_mask,
            body=density.body,
            heart=density.heart,
            heart_centre=(patient.heart_centre[1] * size, patient.heart_centre[0] * size),
        )
        inject = InjectArtefact(art)
        inject.generator = rng  # share the image's generator: one seed drives everything
        image, artefact_mask = inject(image, layout=layout, randomize=False)
        artefact_name = art.name
        art_details = dict(inject.last.details) if inject.last is not None else {}
    image = add_detector_noise(image, device, rng)
    return PhantomImage(
        image=image,
        finding_mask=result.mask,
        artefact_mask=np.asarray(artefact_mask, dtype=bool),
        lung_mask=density.lung_mask,
        label=label,
        artefact=artefact_name,
        device=device,
        site=site,
        view_position=view,
        sex=patient.sex,
        age_band=patient.age_band,
        details={"finding": result.details, "artefact": art_details},
    )
