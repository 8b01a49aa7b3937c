"""The image gate: every image the toolkit reads comes in through this module.

Two readers, one per kind of image:

- :func:`load_image` for scans (MRI, PET) and anything else whose voxel values must be
  trusted: it validates the file, the header (before the data are read, so that a
  corrupt header cannot make us allocate gigabytes), the affine, the field of view
  and the voxel values, and returns a float32 RAS+ image;
- :func:`read_map` for derived maps (statistical maps, masks, label images): only
  read and checked to be 3D, their values (NaN included) kept as they are.

Both raise :class:`~anomaly.io.AnomalyInputError` with one line naming the image.

The field-of-view test of :func:`load_image` compares the box spanned by the voxels
(centres +- half a voxel) in world coordinates with the MNI152 brain box (x -90..90,
y -126..90, z -72..108 mm): at least :data:`MIN_MNI_OVERLAP` of the brain box must be
covered. An image in scanner space, or with a default affine, fails it.

NaN voxels are "inside the brain" when their world position falls inside nilearn's
MNI152 brain mask (2 mm) eroded by 6 mm; other NaNs are set to 0 with a warning.
Without the MNI check no brain position is known and all NaNs are set to 0 with a
warning.
"""

from __future__ import annotations

import gzip
import math
import os
import warnings
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from anomaly.io.errors import AnomalyInputError, describe_error

#: Largest accepted size of one image axis, in voxels.
MAX_DIM = 2048
#: Largest accepted number of voxels in one image (a 512**3 float32 volume is 512 MiB).
MAX_VOXELS = 512**3
#: Bounding box of the MNI152 brain in mm (SPM's default bounding box), (min, max) per axis.
MNI_BRAIN_BOX = np.array([[-90.0, 90.0], [-126.0, 90.0], [-72.0, 108.0]])
#: Minimal fraction of :data:`MNI_BRAIN_BOX` that an image's field of view must cover.
MIN_MNI_OVERLAP = 0.5
#: Erosion (in 2 mm voxels) of the MNI brain mask used to decide whether NaNs are
#: "inside the brain": masks of SPM/FSL outputs differ from the template's at the rim,
#: so only NaNs well inside the brain are an error.
_NAN_MASK_EROSION = 3

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: Compressed files whose header claims more data than this (bytes) are streamed once
#: to check their length before the data are read (see :func:`_check_data_size`).
_CHECKED_DATA_BYTES = 32 * 2**20


def load_image(
    img: str | os.PathLike | nib.spatialimages.SpatialImage,
    *,
    name: str | None = None,
    check_mni: bool = True,
    check_values: bool = True,
    average_frames: bool = False,
) -> nib.Nifti1Image:
    """Load and validate one 3D image: the toolkit's single image gate for scans.

    Parameters
    ----------
    img : str, os.PathLike or nibabel image
        Path to a NIfTI file (``.nii`` or ``.nii.gz``; other volume formats that
        nibabel reads, such as MGH or Analyze, are accepted too) or an image in memory.
    name : str, optional
        Name used in error and warning messages. Defaults to the path as given, or
        the image's file name, or ``"image"``.
    check_mni : bool, default=True
        Refuse images whose field of view does not overlap the MNI152 brain, and use
        the MNI152 brain mask to decide whether NaN voxels are inside the brain
        (both tests are described in the module docstring).
    check_values : bool, default=True
        Check voxel values (Inf, NaN, constant image). Turn off for masks and label
        images, which may legitimately be empty; their values are then returned as
        read (NaN included).
    average_frames : bool, default=False
        Accept a 4D image (a multi-frame PET) and return the mean of its frames,
        weighted by the ``FrameDuration`` list of its JSON sidecar (same name,
        ``.json``) when there is one, else equally weighted (see
        :func:`frame_weights`). Without it a 4D image is refused.

    Returns
    -------
    nibabel.Nifti1Image
        A 3D float32 image in RAS+ voxel orientation (``nib.as_closest_canonical``),
        with scaling (``scl_slope``/``scl_inter``) applied, no NaN and no Inf
        (when ``check_values``); its sform and qform both hold the affine.

    Raises
    ------
    AnomalyInputError
        If the file is missing, a folder, empty, not a readable image, truncated or
        corrupt; if the image is 2D, 4D with several volumes, absurdly large
        (checked from the header, before reading the data), complex or otherwise
        non-numeric; if its affine is singular or not finite; if it holds infinite
        values, NaNs inside the brain or a single value; or (``check_mni``) if its
        field of view does not overlap the MNI152 brain.

    Warns
    -----
    UserWarning
        When NaN voxels outside the brain (as written by SPM for PET) are set to 0.
    """
    source, label = _open_image(img, name)
    if average_frames and len(source.shape) == 4 and source.shape[3] > 1:
        return load_image(_frame_mean(source, label), name=label, check_mni=check_mni,
                          check_values=check_values)
    spatial, affine = _check_source_header(source, label, check_mni)
    data = _read_data(source, label).reshape(spatial)
    if check_values:
        data = _check_values(data, affine, label, check_mni)
    return _canonical_image(data, affine, _xform_code(source))


def check_image_header(img: str | os.PathLike | nib.spatialimages.SpatialImage, *, name: str | None = None,
                       check_mni: bool = True, average_frames: bool = False) -> None:
    """The checks of :func:`load_image` that need only the header, without reading the data.

    Cheap enough to run on every input of a batch before any work starts.
    ``average_frames`` accepts a multi-frame 4D image as :func:`load_image` does
    (its frame durations checked too).

    Raises
    ------
    AnomalyInputError
        If the file is missing, empty, unreadable, not a 3D volume, corrupt (implausible
        size, non-numeric data, singular affine), shorter than its data, or
        (``check_mni``) outside the MNI152 brain.
    """
    source, label = _open_image(img, name)
    if average_frames and len(source.shape) == 4 and source.shape[3] > 1:
        spatial, affine, _ = _frame_header(source, label)
        if check_mni:
            _check_mni_overlap(spatial, affine, label)
        return
    _check_source_header(source, label, check_mni)


def _check_source_header(source: nib.spatialimages.SpatialImage, label: str,
                         check_mni: bool) -> tuple[tuple[int, int, int], np.ndarray]:
    """Header checks of an opened image; returns its spatial shape and affine."""
    # Header first: a corrupt header must not make us allocate gigabytes.
    spatial = _check_header(source, label)
    affine = np.asarray(source.affine, dtype=np.float64)
    _check_affine(affine, label)
    if check_mni:
        _check_mni_overlap(spatial, affine, label)
    _check_data_size(source, label)
    return spatial, affine


def _check_header(source: nib.spatialimages.SpatialImage, label: str) -> tuple[int, int, int]:
    """The spatial shape, after checking the header's shape and data type."""
    shape = tuple(int(s) for s in source.shape)
    _check_shape(shape, label)
    _check_dtype(source, label)
    return shape[:3]


def _check_dtype(source: nib.spatialimages.SpatialImage, label: str) -> None:
    """Refuse complex and non-numeric voxel types (from the header)."""
    dtype = np.dtype(source.get_data_dtype())
    if dtype.kind == "c":
        raise AnomalyInputError(
            f"{label}: image has complex data type {dtype}; expected real values"
        )
    if dtype.kind not in "biuf":
        raise AnomalyInputError(
            f"{label}: image has unsupported data type {dtype}; expected numeric voxel values"
        )


def _canonical_image(data: np.ndarray, affine: np.ndarray, code: int) -> nib.Nifti1Image:
    """float32 RAS+ image whose sform and qform both hold ``affine`` with ``code``."""
    out = nib.Nifti1Image(data, affine)
    out.set_sform(affine, code=code)
    out.set_qform(affine, code=code)
    out.header.set_xyzt_units(xyz="mm")
    out.set_data_dtype(np.float32)
    return nib.as_closest_canonical(out)


def _check_values(data: np.ndarray, affine: np.ndarray, label: str, check_mni: bool) -> np.ndarray:
    """Refuse Inf, NaN in the brain and constant images; set other NaNs to 0."""
    if not np.isfinite(data).all():  # one pass for the usual, finite image
        _clear_nans(data, affine, label, check_mni)
    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise AnomalyInputError(f"{label}: image is constant (every voxel is {lo:g})")
    return data


def _clear_nans(data: np.ndarray, affine: np.ndarray, label: str, check_mni: bool) -> None:
    """Refuse Inf and NaN in the brain; set the other NaNs to 0 (in place) with a warning."""
    # SPM writes NaN outside its brain mask; that is harmless, NaN in the brain is not.
    if np.isinf(data).any():
        n_inf = int(np.isinf(data).sum())
        raise AnomalyInputError(
            f"{label}: image contains {n_inf} infinite voxel value(s) "
            "(or values beyond the float32 range)"
        )
    nan = np.isnan(data)
    n_nan = int(nan.sum())
    if n_nan == data.size:
        raise AnomalyInputError(f"{label}: image contains only NaN values")
    if check_mni:
        n_inside = _count_in_mni_brain(np.argwhere(nan), affine)
        if n_inside:
            raise AnomalyInputError(
                f"{label}: image has {n_inside} NaN voxel(s) inside the MNI152 brain"
            )
        where = "outside the brain"
    else:
        where = "(brain position unknown without the MNI check)"
    # stacklevel 4: the warning points at the caller of load_image.
    warnings.warn(
        f"{label}: {n_nan} NaN voxel(s) {where} set to 0", UserWarning, stacklevel=4
    )
    data[nan] = 0.0


def _open_image(img: Any, name: str | None) -> tuple[nib.spatialimages.SpatialImage, str]:
    """Return a (lazy) nibabel image and the label used in messages."""
    if isinstance(img, nib.spatialimages.SpatialImage):
        filename = img.get_filename()
        return img, name or (str(filename) if filename else "image")
    if not isinstance(img, (str, os.PathLike)):
        raise AnomalyInputError(
            f"{name or 'img'}: expected a path or a nibabel image, got {type(img).__name__}"
        )
    path = Path(img)
    label = name or str(img)
    if not path.exists():
        raise AnomalyInputError(f"{label}: file not found")
    if path.is_dir():
        raise AnomalyInputError(f"{label}: is a folder; expected a NIfTI image file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AnomalyInputError(f"{label}: cannot read file ({describe_error(exc)})") from exc
    if size == 0:
        raise AnomalyInputError(f"{label}: file is empty")
    try:
        loaded = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many unrelated types
        raise AnomalyInputError(f"{label}: not a readable NIfTI image ({describe_error(exc)})") from exc
    if not isinstance(loaded, nib.spatialimages.SpatialImage):
        raise AnomalyInputError(
            f"{label}: is a {type(loaded).__name__}, not a volume image; expected a NIfTI image"
        )
    return loaded, label


def _check_shape(shape: tuple[int, ...], label: str) -> None:
    # Trailing singleton axes (x, y, z, 1[, 1...]) are a 3D volume saved as 4D/5D.
    dims = "x".join(str(s) for s in shape)
    if len(shape) < 3:
        raise AnomalyInputError(f"{label}: image is {len(shape)}D ({dims}); expected a 3D volume")
    if any(s < 1 for s in shape):
        raise AnomalyInputError(f"{label}: image has an empty axis ({dims})")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        if len(shape) == 4:
            raise AnomalyInputError(
                f"{label}: image is 4D with {shape[3]} volumes; expected a 3D volume"
            )
        raise AnomalyInputError(f"{label}: image is {len(shape)}D ({dims}); expected a 3D volume")
    spatial = shape[:3]
    if any(s == 1 for s in spatial):
        raise AnomalyInputError(
            f"{label}: image is a single slice ({dims}); expected a 3D volume"
        )
    if max(spatial) > MAX_DIM or math.prod(spatial) > MAX_VOXELS:
        raise AnomalyInputError(
            f"{label}: header claims an implausible size ({dims} voxels; at most {MAX_DIM} "
            f"per axis and {MAX_VOXELS} in all); the header is probably corrupt"
        )


def _check_affine(affine: np.ndarray, label: str) -> None:
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise AnomalyInputError(f"{label}: image affine is not finite")
    linear = affine[:3, :3]
    zooms = np.sqrt((linear**2).sum(axis=0))
    det = float(np.linalg.det(linear))
    # A determinant tiny relative to the voxel volume means collinear axes.
    if zooms.min() <= 1e-6 or abs(det) <= 1e-6 * float(np.prod(zooms)):
        raise AnomalyInputError(f"{label}: image affine is singular (voxel axes are degenerate)")


def _fov_box(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World bounding box (3 x [min, max]) of the voxels, edges included."""
    corners = np.array(
        [[i, j, k] for i in (-0.5, shape[0] - 0.5) for j in (-0.5, shape[1] - 0.5)
         for k in (-0.5, shape[2] - 0.5)]
    )
    world = nib.affines.apply_affine(affine, corners)
    return np.stack([world.min(axis=0), world.max(axis=0)], axis=1)


def _check_mni_overlap(shape: tuple[int, ...], affine: np.ndarray, label: str) -> None:
    box = _fov_box(shape, affine)
    lo = np.maximum(box[:, 0], MNI_BRAIN_BOX[:, 0])
    hi = np.minimum(box[:, 1], MNI_BRAIN_BOX[:, 1])
    overlap = float(np.prod(np.clip(hi - lo, 0.0, None)))
    fraction = overlap / float(np.prod(MNI_BRAIN_BOX[:, 1] - MNI_BRAIN_BOX[:, 0]))
    if fraction < MIN_MNI_OVERLAP:
        fov = ", ".join(
            f"{axis} {round(a)}..{round(b)}" for axis, (a, b) in zip("xyz", box, strict=True)
        )
        raise AnomalyInputError(
            f"{label}: field of view ({fov} mm; {fraction:.0%} of the MNI152 brain box) "
            "does not overlap the MNI152 brain; register the image to MNI152 space first"
        )


def _check_data_size(source: nib.spatialimages.SpatialImage, label: str) -> None:
    """Refuse a file too short for the data its header describes, before reading them.

    nibabel allocates the whole data block before it finds the file short, so a tiny
    file with a corrupt header (dims, data type, vox_offset) could cost gigabytes.
    Uncompressed files are checked from their size; compressed ones are streamed
    (without keeping the data) when the header claims more than
    :data:`_CHECKED_DATA_BYTES`.
    """
    proxy = source.dataobj
    holder = source.file_map.get("image") if nib.is_proxy(proxy) else None
    filename = getattr(holder, "filename", None)
    if filename is None:
        return  # in memory, or an open file object: nothing to check against
    offset = int(getattr(proxy, "offset", 0))
    need = offset + math.prod(source.shape) * np.dtype(source.get_data_dtype()).itemsize
    problem = (f"{label}: image data are truncated or corrupt (the header describes data up to "
               f"byte {need}, beyond the end of the file)")
    if Path(filename).suffix.lower() not in nib.openers.ImageOpener.compress_ext_map:
        if need > os.path.getsize(filename):
            raise AnomalyInputError(problem)
        return
    if need <= _CHECKED_DATA_BYTES:
        return
    got = 0
    try:
        with nib.openers.ImageOpener(filename) as stream:
            while got < need:
                chunk = stream.read(min(1 << 20, need - got))
                if not chunk:
                    break
                got += len(chunk)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise AnomalyInputError(
            f"{label}: image data are truncated or corrupt ({describe_error(exc)})"
        ) from exc
    if got < need:
        raise AnomalyInputError(problem)


def _read_data(source: nib.spatialimages.SpatialImage, label: str) -> np.ndarray:
    try:
        # Scaled by scl_slope/scl_inter, as float32 (half the memory of float64).
        proxy = source.dataobj
        if not nib.is_proxy(proxy):  # in memory: never write into the caller's array
            return np.asarray(source.get_fdata(dtype=np.float32), dtype=np.float32).copy()
        data = np.asarray(proxy, dtype=np.float32)
        if data.flags.writeable and (data.flags.owndata or isinstance(data.base, bytearray)):
            return data  # read from the file into a new array: no second copy
        return data.copy()  # a memory-mapped .nii: do not keep the file mapped
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, OverflowError) as exc:
        raise AnomalyInputError(
            f"{label}: image data are truncated or corrupt ({describe_error(exc)})"
        ) from exc
    except MemoryError as exc:
        raise AnomalyInputError(f"{label}: image is too large to load into memory") from exc


@lru_cache(maxsize=1)
def _mni_core_mask() -> tuple[np.ndarray, np.ndarray]:
    """Eroded MNI152 brain mask at 2 mm and its affine (for NaN placement only)."""
    from nilearn.datasets import load_mni152_brain_mask  # slow import: only when needed
    from scipy.ndimage import binary_erosion

    mask_img = load_mni152_brain_mask(resolution=1)
    # Every other 1 mm voxel is exactly the 2 mm grid and avoids a resampling.
    mask = np.asarray(mask_img.dataobj)[::2, ::2, ::2] > 0
    affine = mask_img.affine.copy()
    affine[:3, :3] *= 2.0
    mask = binary_erosion(mask, iterations=_NAN_MASK_EROSION)
    return mask, affine


def _count_in_mni_brain(ijk: np.ndarray, affine: np.ndarray) -> int:
    mask, mask_affine = _mni_core_mask()
    world = nib.affines.apply_affine(affine, ijk)
    vox = np.rint(nib.affines.apply_affine(np.linalg.inv(mask_affine), world)).astype(int)
    inside = np.all((vox >= 0) & (vox < np.array(mask.shape)), axis=1)
    vox = vox[inside]
    return int(mask[vox[:, 0], vox[:, 1], vox[:, 2]].sum())


def _xform_code(img: nib.spatialimages.SpatialImage) -> int:
    """Keep the input's sform/qform code (MNI, aligned...), else say "aligned"."""
    header = img.header
    if isinstance(header, nib.Nifti1Header):
        code = int(header["sform_code"]) or int(header["qform_code"])
        if code:
            return code
    return 2  # "aligned": the data contract says images are in MNI152 space.


#: Largest accepted number of frames of a 4D (multi-frame PET) image.
MAX_FRAMES = 512


def frame_weights(source: nib.spatialimages.SpatialImage, label: str) -> np.ndarray:
    """Weights (summing to 1) of the frames of a 4D image, from its JSON sidecar.

    Parameters
    ----------
    source : nibabel image
        The 4D image; its sidecar is the file of the same name ending in ``.json``.
    label : str
        Name of the image in messages.

    Returns
    -------
    numpy.ndarray
        ``FrameDuration / sum(FrameDuration)`` (BIDS PET, seconds); equal weights
        when the image has no file name, no sidecar or no ``FrameDuration``.

    Raises
    ------
    AnomalyInputError
        If the sidecar is not valid JSON, or its ``FrameDuration`` is not a list of
        one positive number per frame.
    """
    import json

    n_frames = int(source.shape[3])
    filename = source.get_filename()
    sidecar = None
    if filename:
        stem = str(filename)
        for ext in (*NIFTI_EXTENSIONS, ".gz"):
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
                break
        sidecar = Path(stem + ".json")
    if sidecar is None or not sidecar.is_file():
        return np.full(n_frames, 1.0 / n_frames)
    try:
        durations = json.loads(sidecar.read_text()).get("FrameDuration")
    except (OSError, ValueError, AttributeError) as exc:
        raise AnomalyInputError(f"{sidecar}: not a readable JSON sidecar ({describe_error(exc)})") from exc
    if durations is None:
        return np.full(n_frames, 1.0 / n_frames)
    try:
        weights = np.asarray(durations, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        weights = np.array([np.nan])
    if weights.size != n_frames or not np.isfinite(weights).all() or (weights <= 0).any():
        raise AnomalyInputError(
            f"{sidecar}: FrameDuration must list one positive duration per frame "
            f"({n_frames} frames in {label})"
        )
    return weights / weights.sum()


def _frame_mean(source: nib.spatialimages.SpatialImage, label: str) -> nib.Nifti1Image:
    """The weighted mean of the frames of a 4D image, as a 3D image (header checked first)."""
    _, affine, weights = _frame_header(source, label)
    data = _read_data(source, label)
    mean = np.tensordot(data, weights.astype(np.float32), axes=([3], [0])).astype(np.float32)
    img = nib.Nifti1Image(mean, affine)
    code = _xform_code(source)
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    return img


def _frame_header(source: nib.spatialimages.SpatialImage,
                  label: str) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray]:
    """Header checks of a 4D image; its spatial shape, affine and frame weights."""
    shape = tuple(int(s) for s in source.shape)
    _check_shape(shape[:3], label)
    if shape[3] > MAX_FRAMES:
        raise AnomalyInputError(
            f"{label}: header claims {shape[3]} frames (at most {MAX_FRAMES}); the header is probably corrupt"
        )
    _check_dtype(source, label)
    affine = np.asarray(source.affine, dtype=np.float64)
    _check_affine(affine, label)
    weights = frame_weights(source, label)
    _check_data_size(source, label)
    return shape[:3], affine, weights


def read_map(img: Any, what: str, *, finite: bool = False) -> nib.Nifti1Image:
    """Read a 3D derived map (statistical map, mask, label image), keeping its values.

    :func:`load_image` zero-fills or refuses NaN voxels, which is right for raw scans
    but wrong for derived maps: there NaN means "not measured" and must be left out of
    region statistics, not counted as 0.

    Parameters
    ----------
    img : str, path or nibabel image
        The map.
    what : str
        Name used in error messages (parameter or file).
    finite : bool
        Return float32 data with NaN/Inf set to 0 (what a figure draws).

    Raises
    ------
    AnomalyInputError
        The map cannot be read or is not 3D.
    """
    from nilearn.image import check_niimg_3d  # heavy import, only when needed

    try:
        out = check_niimg_3d(img, dtype=None)
    except (TypeError, ValueError, OSError, nib.filebasedimages.ImageFileError) as exc:
        message = " ".join(str(exc).split())[:300]
        given = str(img) if isinstance(img, (str, os.PathLike)) else type(img).__name__
        raise AnomalyInputError(f"{what}: cannot use {given} as a 3D image ({message})") from None
    if not finite:
        return out
    data = np.asarray(out.get_fdata(dtype=np.float32))
    return nib.Nifti1Image(np.where(np.isfinite(data), data, np.float32(0.0)), out.affine)
