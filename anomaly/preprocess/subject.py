"""One subject's images on the model grid: read, resample, normalise, and record quality checks.

The reference-region masks of PET come from the atlas layer, which sits above this
one: callers build them (for example
``Atlas.load("neuromorphometrics").resample_to(grid).region_mask("Cerebell")``) and pass
them to :func:`preprocess_subject`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from anomaly.constants import PET
from anomaly.io import AnomalyInputError, load_image
from anomaly.preprocess.grid import Grid, resample_to_grid, template_images
from anomaly.preprocess.normalise import normalise_mri, normalise_pet

#: BIDS suffix of the PET channel; every other suffix is an MRI contrast.
PET_MODALITY = PET
#: Named PET reference regions; "global" is the mean over the whole brain.
PET_REFERENCES = ("cerebellum", "brainstem", "global")
#: Below this fraction of the brain covered, preprocess_subject warns.
_LOW_COVERAGE = 0.8

# ------------------------------------------------------------------ subjects


@dataclass
class Preprocessed:
    """One subject's images on the model grid, ready for a normative model.

    Attributes
    ----------
    data : numpy.ndarray
        float32 [C, X, Y, Z], one normalised channel per modality (zeros for a
        missing modality and outside the brain).
    present : numpy.ndarray
        bool [C], whether each modality was given.
    modalities : list of str
        Channel names (BIDS suffixes), in the order requested.
    qc : dict
        Per present modality: ``source`` (file or name), ``coverage`` (fraction of
        the template brain mask whose nearest input voxel is non-zero) and the
        normalisation info (MRI: ``median``, ``scale``, ``n_voxels``; PET:
        ``reference``, ``reference_value``, ``reference_voxels``).
    valid : numpy.ndarray
        bool [C, X, Y, Z], brain voxels covered by each image (all False for a
        missing modality); models should ignore the other voxels.
    grid : Grid or None
        The grid of ``data``.
    """

    data: np.ndarray
    present: np.ndarray
    modalities: list[str]
    qc: dict[str, dict[str, Any]] = field(default_factory=dict)
    valid: np.ndarray | None = None
    grid: Grid | None = None


def preprocess_subject(
    images: Mapping[str, str | os.PathLike | nib.spatialimages.SpatialImage | None],
    grid: Grid,
    modalities: Sequence[str],
    *,
    pet_reference: str = "cerebellum",
    reference_masks: Mapping[str, np.ndarray] | None = None,
) -> Preprocessed:
    """Validate, resample and normalise one subject's images onto the model grid.

    Parameters
    ----------
    images : mapping of str to path or nibabel image
        Image per modality (BIDS suffix). Modalities the model does not use are
        ignored with a warning; None values count as missing.
    grid : Grid
        Model grid (see :func:`make_grid`).
    modalities : sequence of str
        The model's channels, in order.
    pet_reference : str, default="cerebellum"
        PET reference region: "global" (mean over the brain) or a key of
        ``reference_masks`` ("cerebellum", "brainstem"...).
    reference_masks : mapping of str to numpy.ndarray of bool, optional
        Reference-region masks on ``grid``, built by the caller from an atlas, e.g.
        ``{"cerebellum": atlas.resample_to(grid).region_mask("Cerebell")}``.
        Needed only when a PET image is processed with a non-global reference.

    Returns
    -------
    Preprocessed
        Channels in the order of ``modalities``. The brain mask is the MNI152
        template mask on the grid (inputs may or may not be skull-stripped).

    Raises
    ------
    AnomalyInputError
        For an invalid image (see :func:`anomaly.io.load_image`), pet_reference or
        reference mask, or when none of the requested modalities is given.

    Warns
    -----
    UserWarning
        For ignored modalities and for images covering less than 80% of the brain.
    """
    modalities = _check_arguments(modalities, grid, pet_reference)
    given = _given_images(images, modalities)
    uses_pet = PET_MODALITY in modalities and PET_MODALITY in given
    reference = _reference_mask(reference_masks, pet_reference, grid, uses_pet)
    brain = template_images(grid)["mask"] > 0.5
    data = np.zeros((len(modalities), *grid.shape), dtype=np.float32)
    valid = np.zeros(data.shape, dtype=bool)
    qc: dict[str, dict[str, Any]] = {}
    for channel, modality in enumerate(modalities):
        if modality in given:
            data[channel], valid[channel], qc[modality] = _preprocess_image(
                given[modality], modality, grid, brain, reference, pet_reference
            )
    present = np.array([m in given for m in modalities], dtype=bool)
    return Preprocessed(data=data, present=present, modalities=modalities, qc=qc,
                        valid=valid, grid=grid)


def _check_arguments(modalities: Sequence[str], grid: Grid, pet_reference: str) -> list[str]:
    """The modalities as a list, after checking them, the grid and the PET reference name."""
    if isinstance(modalities, str):
        modalities = [modalities]
    modalities = list(modalities)
    if not modalities or len(set(modalities)) != len(modalities):
        raise AnomalyInputError(
            f"modalities: expected distinct modality names, got {modalities!r}"
        )
    if not isinstance(grid, Grid):
        raise AnomalyInputError(f"grid: expected a Grid, got {type(grid).__name__}")
    if pet_reference != "global" and (not isinstance(pet_reference, str) or not pet_reference):
        raise AnomalyInputError(f"pet_reference: expected a region name, got {pet_reference!r}")
    return modalities


def _given_images(images: Mapping[str, Any], modalities: list[str]) -> dict[str, Any]:
    """The images that are not None; warns about modalities the model does not use."""
    given = {m: src for m, src in images.items() if src is not None}
    ignored = sorted(set(given) - set(modalities))
    if ignored:
        warnings.warn(
            "ignoring image(s) of modalities the model does not use: "
            + ", ".join(f"{m} ({_source_name(given[m])})" for m in ignored),
            UserWarning,
            stacklevel=3,  # the caller of preprocess_subject
        )
    if not any(m in given for m in modalities):
        got = ", ".join(sorted(given)) or "none"
        raise AnomalyInputError(
            f"images: none of the model's modalities ({', '.join(modalities)}) "
            f"was given (got: {got})"
        )
    return given


def _reference_mask(
    reference_masks: Mapping[str, np.ndarray] | None, pet_reference: str, grid: Grid,
    uses_pet: bool,
) -> np.ndarray | None:
    """The boolean PET reference-region mask on the grid; None when none is needed."""
    if not uses_pet or pet_reference == "global":
        return None
    if reference_masks is None or pet_reference not in reference_masks:
        raise AnomalyInputError(
            f"pet_reference: no mask given for {pet_reference!r} in reference_masks; "
            "build it from an atlas or use 'global'"
        )
    reference = np.asarray(reference_masks[pet_reference])
    if reference.shape != grid.shape:
        raise AnomalyInputError(
            f"reference_masks[{pet_reference!r}]: shape {reference.shape} does not "
            f"match the grid shape {grid.shape}"
        )
    return reference.astype(bool)


def _preprocess_image(
    source: Any, modality: str, grid: Grid, brain: np.ndarray,
    reference: np.ndarray | None, pet_reference: str,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One channel: the normalised image on the grid, the voxels it covers, its QC entry."""
    label = _source_name(source)
    # A multi-frame static PET is averaged over its frames (weighted by their durations).
    img = load_image(source, name=label, check_mni=True, average_frames=modality == PET_MODALITY)
    resampled, covered, coverage = _resample_with_coverage(img, grid, brain, label)
    if modality == PET_MODALITY:
        normalised, info = normalise_pet(resampled, brain, reference, valid=covered, name=label)
        info = {"reference": pet_reference, **info}
    else:
        normalised, info = normalise_mri(resampled, brain, valid=covered, name=label)
    return normalised, covered, {"source": label, "coverage": coverage, **info}


def _resample_with_coverage(
    img: nib.Nifti1Image, grid: Grid, brain: np.ndarray, label: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """The image on the grid, the brain voxels it covers and their fraction of the brain."""
    resampled = resample_to_grid(img, grid, "continuous")
    # Coverage from the nearest input voxel: spline interpolation bleeds small
    # values into empty regions, which must not count as covered.
    signal = nib.Nifti1Image((np.asarray(img.dataobj) != 0).astype(np.uint8), img.affine)
    covered = brain & (resample_to_grid(signal, grid, "nearest") > 0) & (resampled != 0)
    coverage = float(covered.sum()) / int(brain.sum())
    if coverage < _LOW_COVERAGE:
        warnings.warn(
            f"{label}: image covers only {coverage:.0%} of the brain",
            UserWarning,
            stacklevel=4,  # the caller of preprocess_subject (via _preprocess_image)
        )
    return resampled, covered, coverage


def _source_name(source: Any) -> str:
    if isinstance(source, nib.spatialimages.SpatialImage):
        filename = source.get_filename()
        return str(filename) if filename else "image"
    return str(source)
