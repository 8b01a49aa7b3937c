"""ANTs registrations: T1w to the template, other volumes to the T1w, applying transforms.

ANTsPy (``antspyx``) is imported inside the functions: importing it is slow and only
``anomaly prepare`` needs it. No ANTs data fetcher is ever called (they download):
the target images come from :mod:`anomaly.registration.template`.

Transforms follow the ANTs convention: a list applied last-to-first, mapping points of
the fixed image to the moving image (so that the moving image is resampled onto the
fixed grid). :func:`register_t1w` writes composite ``.h5`` files; :func:`coregister`
writes one ``.mat`` affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from anomaly.io import AnomalyInputError

__all__ = ["MODES", "RegistrationMode", "apply_transforms", "coregister", "register_t1w"]


@dataclass(frozen=True)
class RegistrationMode:
    """Settings of one ``--registration`` choice.

    Attributes
    ----------
    transform : str
        ANTsPy ``type_of_transform`` of the T1w-to-template registration (rigid, then
        affine, then SyN).
    template_mm : float
        Finest voxel size of the template the T1w is registered to: the template is
        at the output resolution, but never finer than this (a finer template costs
        time and gives a finer warp).
    """

    transform: str
    template_mm: float


#: ``--registration`` choices. "fast": ANTs' quick SyN script (mutual information, fewer
#: iterations, no full-resolution SyN level), template at 2 mm or coarser; "accurate":
#: the full SyN script (cross-correlation, more iterations at every level), template at
#: the output resolution down to 1 mm. Both "Repro" variants, with a fixed ANTs seed: the
#: same T1w gives the same registration (the rigid co-registrations of the other volumes
#: can still differ slightly between runs).
MODES: dict[str, RegistrationMode] = {
    "fast": RegistrationMode("antsRegistrationSyNQuickRepro[s]", 2.0),
    "accurate": RegistrationMode("antsRegistrationSyNRepro[s]", 1.0),
}


def _ants() -> Any:
    import os

    # ANTs draws its metric samples from a clock seed unless told otherwise; a fixed seed
    # makes the T1w registration the same from run to run (a user's own seed wins).
    os.environ.setdefault("ANTS_RANDOM_SEED", "1")
    import ants  # slow import: only when registering

    return ants


def to_ants(img: nib.spatialimages.SpatialImage) -> Any:
    """An ANTs image of a 3D nibabel image (float32)."""
    data = np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32)
    plain = nib.Nifti1Image(data, img.affine)
    plain.header.set_xyzt_units("mm", "sec")  # else ANTs prints a warning per image
    return _ants().from_nibabel_nifti(plain)


def to_nibabel(img: Any) -> nib.Nifti1Image:
    """A nibabel image (float32) of an ANTs image."""
    out = _ants().to_nibabel_nifti(img)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), out.affine)


def register_t1w(t1w: nib.spatialimages.SpatialImage, template: nib.spatialimages.SpatialImage,
                 mode: RegistrationMode, prefix: Path, label: str) -> tuple[Path, Path]:
    """Register a native T1w to the template: rigid, affine, then SyN.

    Parameters
    ----------
    t1w : nibabel image
        The subject's native T1w.
    template : nibabel image
        The T1 template (fixed image).
    mode : RegistrationMode
        Transform type (see :data:`MODES`).
    prefix : pathlib.Path
        Output prefix of the ANTs files (a scratch folder).
    label : str
        Name of the image in error messages.

    Returns
    -------
    forward, inverse : pathlib.Path
        Composite transforms: template points to T1w points (resamples the T1w onto
        the template grid) and the inverse (resamples template-space images onto the
        T1w grid).

    Raises
    ------
    AnomalyInputError
        If ANTs fails (e.g. the image holds no usable signal).
    """
    ants = _ants()
    try:
        result = ants.registration(fixed=to_ants(template), moving=to_ants(t1w),
                                   type_of_transform=mode.transform, outprefix=str(prefix),
                                   write_composite_transform=True)
    except (RuntimeError, ValueError) as exc:
        raise AnomalyInputError(f"{label}: registration to the MNI152 template failed ({exc})") from exc
    return Path(result["fwdtransforms"]), Path(result["invtransforms"])


def coregister(moving: nib.spatialimages.SpatialImage, fixed: nib.spatialimages.SpatialImage,
               prefix: Path, label: str) -> Path:
    """Rigid registration of one volume to the subject's T1w by mutual information.

    Mattes mutual information copes with any pair of contrasts (PET to T1w included). It
    is computed on every voxel (ANTs' "DenseRigid"): the default random 20% sample made
    the result change from run to run, and now and then land a FLAIR far off the T1w.

    Parameters
    ----------
    moving : nibabel image
        The volume (FLAIR, PET, ADC...).
    fixed : nibabel image
        The subject's native T1w.
    prefix : pathlib.Path
        Output prefix of the ANTs file.
    label : str
        Name of the moving image in error messages.

    Returns
    -------
    pathlib.Path
        The ``.mat`` affine: T1w points to ``moving`` points.
    """
    ants = _ants()
    try:
        result = ants.registration(fixed=to_ants(fixed), moving=to_ants(moving), type_of_transform="Rigid",
                                   aff_metric="mattes", aff_random_sampling_rate=1.0,
                                   aff_iterations=(500, 250, 100, 0),
                                   aff_shrink_factors=(8, 4, 2, 1), aff_smoothing_sigmas=(3, 2, 1, 0),
                                   outprefix=str(prefix))
    except (RuntimeError, ValueError) as exc:
        raise AnomalyInputError(f"{label}: rigid registration to the T1w failed ({exc})") from exc
    return Path(result["fwdtransforms"][0])


def apply_transforms(img: nib.spatialimages.SpatialImage, reference: nib.spatialimages.SpatialImage,
                     transforms: list[Path], *, labels: bool = False) -> nib.Nifti1Image:
    """Resample ``img`` onto the grid of ``reference`` through ANTs transforms.

    Parameters
    ----------
    img : nibabel image
        Image to move.
    reference : nibabel image
        Defines the output grid.
    transforms : list of pathlib.Path
        ANTs transforms, applied last to first (reference points to ``img`` points).
    labels : bool, default=False
        Nearest-neighbour interpolation (masks, label images) instead of linear.

    Returns
    -------
    nibabel.Nifti1Image
        float32 image on the grid of ``reference``.
    """
    ants = _ants()
    moved = ants.apply_transforms(fixed=to_ants(reference), moving=to_ants(img),
                                  transformlist=[str(t) for t in transforms],
                                  interpolator="nearestNeighbor" if labels else "linear")
    return to_nibabel(moved)
