"""Is the PET reference region itself normal? And the global level under each reference.

A PET SUVR divides every voxel by the mean uptake of a reference region (cerebellum by
default). When that region is itself hypometabolic (crossed cerebellar diaschisis
after a supratentorial lesion, for instance), every other region looks better
preserved than it is. The check compares the ratio of the reference region to another
region with the controls' ratios, and reports the global cortical level computed with
each reference side by side, so that a reader sees how much the choice matters.

Ratios are of mean uptake over the voxels the image covers; they do not depend on the
reference the image was normalised with.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from anomaly.qc.reference import MetricRange

#: Regions whose ratios are compared: the reference and the region it is compared with.
RATIOS = {"cerebellum/brainstem": ("cerebellum", "brainstem"), "brainstem/cerebellum": ("brainstem", "cerebellum")}
#: Which ratio tests which reference region ("global" is not tested: it is the whole brain).
REFERENCE_RATIO = {"cerebellum": "cerebellum/brainstem", "brainstem": "brainstem/cerebellum"}
#: Warn when the reference ratio is this many robust scales below the controls' median...
WARN_SCALES = 4.0
#: ... and at least this fraction below it (so that tiny control spreads do not warn).
WARN_DROP = 0.08
_MIN_SCALE = 0.01


def region_means(pet: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float | None]:
    """Mean uptake of "cerebellum", "brainstem", "global" and "cortex" over covered voxels.

    Parameters
    ----------
    pet : numpy.ndarray
        A PET channel on the model grid (0 where not covered).
    masks : mapping of str to numpy.ndarray
        :func:`anomaly.qc.masks.qc_masks`.
    """
    covered = np.isfinite(pet) & (pet != 0)
    out: dict[str, float | None] = {}
    for name in ("cerebellum", "brainstem", "global", "cortex"):
        voxels = masks[name] & covered
        out[name] = float(pet[voxels].mean(dtype=np.float64)) if voxels.any() else None
    return out


def reference_ratios(means: Mapping[str, float | None]) -> dict[str, float | None]:
    """The ratios of :data:`RATIOS` from :func:`region_means` output.

    Parameters
    ----------
    means : mapping
    """
    out: dict[str, float | None] = {}
    for name, (a, b) in RATIOS.items():
        out[name] = means[a] / means[b] if means.get(a) and means.get(b) else None
    return out


def levels_by_reference(subject: Mapping[str, float | None], controls: Mapping[str, float | None]
                        ) -> dict[str, float | None]:
    """Global cortical PET level (% of the controls) with each reference region.

    ``100 x (cortex / reference)_subject / (cortex / reference)_controls``, over the
    whole cortex: it shows how much the reference region matters, beside the headline
    ``global_cortical_pet_percent`` (best-preserved hemisphere, :mod:`anomaly.atlas.petlevels`).

    Parameters
    ----------
    subject, controls : mapping
        :func:`region_means` of the subject and of the controls' mean image.
    """
    out: dict[str, float | None] = {}
    for ref in ("cerebellum", "brainstem", "global"):
        values = (subject.get("cortex"), subject.get(ref), controls.get("cortex"), controls.get(ref))
        if any(not v for v in values):
            out[ref] = None
            continue
        s_cortex, s_ref, c_cortex, c_ref = values
        out[ref] = round(100.0 * (s_cortex / s_ref) / (c_cortex / c_ref), 1)
    return out


def rescale_levels(levels: Mapping[str, float | None], reference: str, level: float) -> dict[str, float | None]:
    """:func:`levels_by_reference` rescaled so that the model's own reference gives ``level``.

    A change of reference region multiplies the subject's whole SUVR image by one
    number, so it moves every cortical level (whole cortex or best hemisphere) by the
    same factor: the headline level (best-preserved hemisphere) under reference ``R``
    is ``level x levels[R] / levels[reference]``.

    Parameters
    ----------
    levels : mapping
        :func:`levels_by_reference` (whole cortex).
    reference : str
        The model's PET reference.
    level : float
        The headline ``global_cortical_pet_percent`` (computed with ``reference``).
    """
    own = levels.get(reference)
    if not own:
        return dict(levels)
    return {ref: None if value is None else round(level * value / own, 1) for ref, value in levels.items()}


def check_reference(reference: str, ratios: Mapping[str, float | None],
                    control_ratios: Mapping[str, MetricRange]) -> str | None:
    """A warning when the PET reference region is abnormally low against the controls.

    Parameters
    ----------
    reference : str
        The model's PET reference ("cerebellum", "brainstem" or "global").
    ratios : mapping
        :func:`reference_ratios` of the subject.
    control_ratios : mapping of str to MetricRange
        The same ratios over the training controls.

    Returns
    -------
    str or None
        The warning, or None (also when nothing can be compared).
    """
    name = REFERENCE_RATIO.get(reference)
    value = ratios.get(name) if name else None
    rng = control_ratios.get(name) if name else None
    if value is None or rng is None:
        return None
    scale = max(rng.scale, _MIN_SCALE * abs(rng.median))
    if value >= rng.low or value > rng.median - WARN_SCALES * scale or value > rng.median * (1 - WARN_DROP):
        return None
    other = RATIOS[name][1]
    return (f"PET reference region {reference} looks hypometabolic: its uptake relative to the {other} is "
            f"{value:.3f} (controls {rng.low:.3f} to {rng.high:.3f}); every SUVR is inflated: compare the "
            "global cortical levels computed with the other references")


def pet_reference_qc(pet: np.ndarray, control_pet: np.ndarray, masks: Mapping[str, np.ndarray],
                     reference: str, control_ratios: Mapping[str, MetricRange]) -> dict[str, Any]:
    """Everything the report shows about the PET reference of one subject.

    Parameters
    ----------
    pet, control_pet : numpy.ndarray
        The subject's PET channel and the controls' mean PET channel (model grid).
    masks : mapping
        :func:`anomaly.qc.masks.qc_masks`.
    reference : str
        The model's PET reference.
    control_ratios : mapping of str to MetricRange
        Empty for a model without QC.

    Returns
    -------
    dict
        ``reference``, ``ratios``, ``global_cortical_pet_percent_by_reference`` and
        ``warning`` (str or None).
    """
    ratios = reference_ratios(region_means(pet, masks))
    levels = levels_by_reference(region_means(pet, masks), region_means(control_pet, masks))
    return {"reference": reference,
            "ratios": {k: (None if v is None else round(v, 4)) for k, v in ratios.items()},
            "global_cortical_pet_percent_by_reference": levels,
            "warning": check_reference(reference, ratios, control_ratios)}
