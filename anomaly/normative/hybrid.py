"""The hybrid method: the autoencoder's and the voxelwise model's z maps of one subject, combined.

A model with a network (methods ``ae``, ``hybrid``, ``auto``) keeps two calibrations:
the autoencoder residuals calibrated on the controls the network never saw, and the
images themselves calibrated on every control (the ``zscore`` method). Its
*components* are the two z maps; the hybrid z map is their per-voxel mean, except in
the channels given as ``voxelwise``: a model whose voxelwise PET is peak-searched
(:func:`~anomaly.normative.calibration.peak_search_in_mask`) takes its PET from the
voxelwise model alone.

Why the mean: where healthy anatomy differs from the training set, the autoencoder
fails to reconstruct it and the voxelwise model's SD is large, and the two errors are
only partly correlated, so averaging lowers false positives; a true lesion is high in
both. The benchmark (``benchmarks/detection.py``) also measures the per-voxel maximum
in the lesion direction (``rule="max"``); it did worse (see README, Benchmarks).

Why not in a peak-searched PET: the search removes most of what misregistration adds to
the voxelwise PET's SD, which the autoencoder's residual (not searched: searching image
and reconstruction apart undoes the reconstruction) still holds. Scored over each
patient's own brain, the mean lowered the focal AUPRC of the realistic benchmark from
0.92 to 0.90 in-domain and from 0.88 to 0.83 on a held-out seed (README, Benchmarks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anomaly.constants import lesion_sign

__all__ = ["HYBRID_RULES", "NETWORK_METHODS", "hybrid_z"]

#: Methods whose model holds a network (and both calibrations).
NETWORK_METHODS = ("ae", "hybrid", "auto")
#: Ways to combine the two z maps of a channel.
HYBRID_RULES = ("mean", "max")


def hybrid_z(z_ae: np.ndarray, z_voxel: np.ndarray, modalities: Sequence[str], *,
             rule: str = "mean", voxelwise: Sequence[str] = ()) -> np.ndarray:
    """Combine the autoencoder and voxelwise z maps of each channel.

    Parameters
    ----------
    z_ae, z_voxel : ndarray, shape (C, X, Y, Z)
        Calibrated z maps of the two components (NaN where a channel is absent).
    modalities : sequence of str
        Channel names (for the lesion direction of ``rule="max"``).
    rule : {"mean", "max"}, default="mean"
        ``"mean"``: per-voxel mean. ``"max"``: per voxel, the component that deviates
        more in the modality's lesion direction (larger ``|z|`` for a two-sided one).
    voxelwise : sequence of str, default=()
        Modalities whose hybrid z is the voxelwise model's alone (either rule).

    Returns
    -------
    ndarray, shape (C, X, Y, Z), float32
    """
    if rule not in HYBRID_RULES:
        raise ValueError(f"rule: expected one of {HYBRID_RULES}; got {rule!r}")
    out = np.empty_like(z_ae, dtype=np.float32)
    for c, modality in enumerate(modalities):
        if modality in voxelwise:
            out[c] = z_voxel[c]
        elif rule == "mean":
            out[c] = 0.5 * (z_ae[c] + z_voxel[c])
        else:
            sign = lesion_sign(modality)
            a, v = (np.abs(z_ae[c]), np.abs(z_voxel[c])) if sign == 0 else (sign * z_ae[c], sign * z_voxel[c])
            out[c] = np.where(a >= v, z_ae[c], z_voxel[c])
    return out
