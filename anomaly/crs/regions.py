"""What the regressor knows about each region besides its statistics: where it is.

The signed MIL regressor (:mod:`anomaly.crs.signed`) does not learn one free weight per
region and head (136 regions x 4 heads would be more parameters than a 50-patient
cohort can pin). It learns the regions' importance as a smooth function of a few fixed
descriptors of each region, computed from the shipped atlas image:

* ``abs_x``, ``y``, ``z``: the centroid in MNI millimetres, divided by 60 (|x| because
  the arousal and awareness systems are bilateral: left and right thalamus share a
  weight unless the data say otherwise through ``x``);
* ``x``: the signed centroid, for lateralised effects;
* ``deep``: 1 for a region that is not cortex (:data:`anomaly.atlas.regions.NON_CORTICAL`:
  brainstem, thalamus, basal ganglia, white matter...), 0 for cortex;
* ``log_volume``: the log of the region's voxel count, centred over the atlas.

Deep midline regions (brainstem, thalami), posteromedial cortex and frontal cortex,
the regions coma research points at, are then each a few weights away.

:func:`hypothesis_prior` writes the literature's prior down as a starting point: the
first channel starts attending to the arousal regions (brainstem, thalami), the second
to the awareness regions (posteromedial and frontal cortex) of
:data:`anomaly.crs.hypothesis.FAMILY_PATTERNS`; the network learns how much to keep
(a gain per channel) and what to add.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .hypothesis import FAMILY_PATTERNS

__all__ = ["DESCRIPTORS", "PRIOR_CHANNELS", "hypothesis_prior", "region_descriptors"]

#: Names of the descriptor columns, in order.
DESCRIPTORS = ("abs_x", "x", "y", "z", "deep", "log_volume")
#: Channels of the hypothesis prior and the region families each starts on.
PRIOR_CHANNELS = (("arousal", ("brainstem", "thalamus")), ("awareness", ("posteromedial", "frontal")))
# Prior logit of a family region over the others: e^3 ~ 20 times the attention.
_PRIOR_LOGIT = 3.0
# Centroid scale: half a brain's width, so that descriptors are about unit size.
_MM_SCALE = 60.0


@lru_cache(maxsize=8)
def _atlas_table(atlas: str) -> tuple[np.ndarray, np.ndarray]:
    """(label indices, descriptors) of every region of a shipped atlas."""
    from anomaly.atlas import Atlas
    from anomaly.atlas.regions import NON_CORTICAL

    at = Atlas.load(atlas)
    labels = at.label_array()
    index = np.asarray(at.labels["index"], dtype=np.int64)
    names = [str(n) for n in at.labels["name"]]
    ijk = np.indices(labels.shape).reshape(3, -1).T
    flat = labels.reshape(-1)
    keep = flat > 0
    counts = np.bincount(flat[keep], minlength=int(index.max()) + 1).astype(np.float64)
    sums = np.stack([np.bincount(flat[keep], weights=ijk[keep, a], minlength=counts.size) for a in range(3)], 1)
    centre_ijk = sums[index] / np.maximum(counts[index], 1.0)[:, None]
    centre_mm = centre_ijk @ at.affine[:3, :3].T + at.affine[:3, 3]
    deep = np.array([bool(re.search(NON_CORTICAL, n, flags=re.IGNORECASE)) for n in names], dtype=np.float64)
    log_volume = np.log(np.maximum(counts[index], 1.0))
    log_volume = log_volume - log_volume.mean()
    desc = np.column_stack([np.abs(centre_mm[:, 0]) / _MM_SCALE, centre_mm[:, 0] / _MM_SCALE,
                            centre_mm[:, 1] / _MM_SCALE, centre_mm[:, 2] / _MM_SCALE, deep, log_volume])
    return index, desc


def region_descriptors(atlas: str | None, region_index: Sequence[int]) -> np.ndarray | None:
    """Fixed descriptors (:data:`DESCRIPTORS`) of the given regions of a shipped atlas.

    Parameters
    ----------
    atlas : str or None
        Name of a shipped atlas (``RegionBags.atlas``).
    region_index : sequence of int
        Atlas labels, in the order of the bags' regions.

    Returns
    -------
    ndarray (R, len(DESCRIPTORS)) or None
        None when the atlas is unknown or not shipped, or a region is not in it: the
        regressor then learns a small free embedding per region instead.
    """
    if not atlas:
        return None
    try:
        index, desc = _atlas_table(str(atlas).lower())
    except (OSError, ValueError, KeyError):  # not a shipped atlas (AnomalyInputError is a ValueError)
        return None
    pos = {int(k): i for i, k in enumerate(index)}
    try:
        rows = [pos[int(k)] for k in region_index]
    except KeyError:
        return None
    return desc[rows].astype(np.float32)


def hypothesis_prior(region_names: Sequence[str], channels: int) -> np.ndarray | None:
    """Prior attention logits (R, channels) from the arousal and awareness families.

    Channel ``k < len(PRIOR_CHANNELS)`` gets :data:`_PRIOR_LOGIT` on the regions of its
    families and 0 elsewhere; further channels start flat. None when no region of the
    atlas matches a family (a user atlas with other names).
    """
    prior = np.zeros((len(region_names), channels), dtype=np.float32)
    for k, (_, families) in enumerate(PRIOR_CHANNELS[:channels]):
        pattern = "|".join(f"(?:{FAMILY_PATTERNS[f]})" for f in families)
        hits = [re.search(pattern, str(name), flags=re.IGNORECASE) is not None for name in region_names]
        prior[np.asarray(hits, dtype=bool), k] = _PRIOR_LOGIT
    return prior if prior.any() else None
