"""The one input gate: validated images, BIDS datasets and atomic writes.

Everything the toolkit reads from a user goes through this module, so that every
problem is reported once, in the same way: an :class:`AnomalyInputError` whose message
is a single line naming the file (or parameter) and the problem. The command line
prints that line and exits with status 2.

Everything the toolkit writes goes through :func:`atomic_path`, so that an interrupted
run never leaves a half-written file behind.

This is the lowest layer of the package: it imports nothing else from ``anomaly``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import secrets
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

__all__ = [
    "AnomalyInputError",
    "AnomalyModelError",
    "Subject",
    "atomic_path",
    "check_output_dir",
    "find_subjects",
    "load_image",
    "modality_from_path",
    "read_participants",
    "save_image",
    "subject_from_path",
    "write_bytes",
    "write_json",
    "write_text",
    "write_tsv",
]

# --------------------------------------------------------------------------- errors


class AnomalyInputError(ValueError):
    """Bad user input: a missing, corrupt or unsuitable file or parameter.

    The message is a single line that names the file (or parameter) and the problem,
    so that the command line can print it as is.
    """

    def __init__(self, message: str) -> None:
        # Messages are printed as one line on stderr: fold any stray newline that an
        # underlying library error may have brought in.
        super().__init__(_one_line(message))


class AnomalyModelError(AnomalyInputError):
    """A model folder that is missing, incomplete, incompatible or tampered with."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> str:
    """Short one-line description of a library exception, for error messages."""
    text = _one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ------------------------------------------------------------------------ images

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

_NIFTI_EXTENSIONS = (".nii.gz", ".nii")
#: Compressed files whose header claims more data than this (bytes) are streamed once
#: to check their length before the data are read (see :func:`_check_data_size`).
_CHECKED_DATA_BYTES = 32 * 2**20


def load_image(
    img: str | os.PathLike | nib.spatialimages.SpatialImage,
    *,
    name: str | None = None,
    check_mni: bool = True,
    check_values: bool = True,
) -> nib.Nifti1Image:
    """Load and validate one 3D image: the toolkit's single image gate.

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
        the MNI152 brain mask to decide whether NaN voxels are inside the brain.
    check_values : bool, default=True
        Check voxel values (Inf, NaN, constant image). Turn off for masks and label
        images, which may legitimately be empty; their values are then returned as
        read (NaN included).

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

    Notes
    -----
    The field-of-view test compares the box spanned by the voxels (centres +- half a
    voxel) in world coordinates with the MNI152 brain box (x -90..90, y -126..90,
    z -72..108 mm): at least :data:`MIN_MNI_OVERLAP` of the brain box must be covered.
    An image in scanner space, or with a default affine, fails it.

    NaN voxels are "inside the brain" when their world position falls inside
    nilearn's MNI152 brain mask (2 mm) eroded by 6 mm; other NaNs are set to 0 with a
    warning. Without ``check_mni`` no brain position is known and all NaNs are set
    to 0 with a warning.
    """
    source, label = _open_image(img, name)

    # Everything below that comes from the header is checked before the data are
    # read, so that a corrupt header cannot make us allocate gigabytes.
    shape = tuple(int(s) for s in source.shape)
    _check_shape(shape, label)
    spatial = shape[:3]

    dtype = np.dtype(source.get_data_dtype())
    if dtype.kind == "c":
        raise AnomalyInputError(
            f"{label}: image has complex data type {dtype}; expected real values"
        )
    if dtype.kind not in "biuf":
        raise AnomalyInputError(
            f"{label}: image has unsupported data type {dtype}; expected numeric voxel values"
        )

    affine = np.asarray(source.affine, dtype=np.float64)
    _check_affine(affine, label)
    if check_mni:
        _check_mni_overlap(spatial, affine, label)

    _check_data_size(source, label)
    data = _read_data(source, label).reshape(spatial)

    if check_values:
        data = _check_values(data, affine, label, check_mni)

    out = nib.Nifti1Image(data, affine)
    code = _xform_code(source)
    out.set_sform(affine, code=code)
    out.set_qform(affine, code=code)
    out.header.set_xyzt_units(xyz="mm")
    out.set_data_dtype(np.float32)
    return nib.as_closest_canonical(out)


def _check_values(data: np.ndarray, affine: np.ndarray, label: str, check_mni: bool) -> np.ndarray:
    """Refuse Inf, NaN in the brain and constant images; set other NaNs to 0."""
    # SPM writes NaN outside its brain mask; that is harmless, NaN in the brain is not.
    if np.isinf(data).any():
        n_inf = int(np.isinf(data).sum())
        raise AnomalyInputError(
            f"{label}: image contains {n_inf} infinite voxel value(s) "
            "(or values beyond the float32 range)"
        )
    nan = np.isnan(data)
    if nan.any():
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
        # stacklevel 3: the warning points at the caller of load_image.
        warnings.warn(
            f"{label}: {n_nan} NaN voxel(s) {where} set to 0", UserWarning, stacklevel=3
        )
        data[nan] = 0.0

    lo, hi = float(data.min()), float(data.max())
    if lo == hi:
        raise AnomalyInputError(f"{label}: image is constant (every voxel is {lo:g})")
    return data


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
        raise AnomalyInputError(f"{label}: cannot read file ({_describe(exc)})") from exc
    if size == 0:
        raise AnomalyInputError(f"{label}: file is empty")
    try:
        loaded = nib.load(path)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many unrelated types
        raise AnomalyInputError(f"{label}: not a readable NIfTI image ({_describe(exc)})") from exc
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
            f"{label}: image data are truncated or corrupt ({_describe(exc)})"
        ) from exc
    if got < need:
        raise AnomalyInputError(problem)


def _read_data(source: nib.spatialimages.SpatialImage, label: str) -> np.ndarray:
    try:
        # get_fdata applies scl_slope/scl_inter; float32 halves the memory.
        return np.asarray(source.get_fdata(dtype=np.float32), dtype=np.float32).copy()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, OverflowError) as exc:
        raise AnomalyInputError(
            f"{label}: image data are truncated or corrupt ({_describe(exc)})"
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


# ----------------------------------------------------------------- BIDS names

_BIDS_NAME = re.compile(r"^(?:[A-Za-z0-9]+-[A-Za-z0-9]+_)+([A-Za-z0-9]+)$")
_SUBJECT = re.compile(r"^sub-([A-Za-z0-9]+)(?:_|$)")


def _strip_extension(name: str) -> str:
    # BIDS entities never contain dots, so everything after the first dot is the
    # extension (".nii.gz", ".nii", ".json", ".tsv").
    return name.split(".", 1)[0]


def modality_from_path(path: str | os.PathLike) -> str | None:
    """Return the BIDS suffix of a file name: the modality.

    Parameters
    ----------
    path : str or os.PathLike
        A file name such as ``sub-01_ses-1_T1w.nii.gz``.

    Returns
    -------
    str or None
        The suffix (``"T1w"``, ``"FLAIR"``, ``"T2w"``, ``"pet"``...), or None when the
        name is not a BIDS name (``key-value`` entities followed by a suffix).

    Examples
    --------
    >>> modality_from_path("sub-01/pet/sub-01_trc-FDG_pet.nii.gz")
    'pet'
    >>> modality_from_path("brain.nii.gz") is None
    True
    """
    match = _BIDS_NAME.match(_strip_extension(Path(path).name))
    return match.group(1) if match else None


def subject_from_path(path: str | os.PathLike) -> str | None:
    """Return the subject label (without ``sub-``) of a BIDS file or folder.

    Parameters
    ----------
    path : str or os.PathLike
        A path such as ``.../sub-01/anat/sub-01_T1w.nii.gz``.

    Returns
    -------
    str or None
        ``"01"`` for the example above: the ``sub-`` entity of the file name, else of
        the nearest ``sub-<label>`` folder; None when there is none.
    """
    path = Path(path)
    for part in (path.name, *(p.name for p in path.parents)):
        match = _SUBJECT.match(_strip_extension(part) if part == path.name else part)
        if match:
            return match.group(1)
    return None


def _participant_id(value: str) -> str:
    value = value.strip()
    return value if value.startswith("sub-") else f"sub-{value}"


# ---------------------------------------------------------------- participants

_REQUIRED_COLUMNS = ("participant_id", "group", "age", "sex")
_GROUPS = ("control", "patient")
_SEXES = {"m": "M", "male": "M", "f": "F", "female": "F"}
_NA = {"", "n/a"}
CRS_MAX = 23


def read_participants(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a BIDS ``participants.tsv``.

    Parameters
    ----------
    path : str or os.PathLike
        Tab-separated file with columns ``participant_id``, ``group``
        (control|patient), ``age``, ``sex`` (M|F), and optionally ``crs`` (CRS-R
        total, integer 0..23) and ``crs_sd`` (its uncertainty, >= 0). Missing values
        are written ``n/a`` (BIDS); empty cells are read as missing too.

    Returns
    -------
    pandas.DataFrame
        One row per participant, in file order: ``participant_id`` (str, with the
        ``sub-`` prefix, added if absent), ``group`` (str), ``age`` (float, NaN when
        n/a), ``sex`` ("M", "F" or NaN; "male"/"female" in any case are accepted),
        ``crs`` (pandas ``Int64``, <NA> when n/a or absent), ``crs_sd`` (float, NaN
        when n/a or absent), then any other column as strings.

    Raises
    ------
    AnomalyInputError
        Naming the file, the line and participant, and the problem: missing file or
        columns, missing or duplicate participant_id, bad group or sex, age or
        crs_sd not a non-negative number, crs not an integer in 0..23.

    Warns
    -----
    UserWarning
        For patients whose crs is n/a (they cannot be used to train a CRS-R model).
    """
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise AnomalyInputError(
            f"{label}: {'is a folder' if path.is_dir() else 'file not found'}; "
            "expected a participants.tsv file"
        )
    try:
        # index_col=False: a row with an extra cell must not turn the first column into
        # the index (which shifts every column); pandas warns instead, made an error here.
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(
                path, sep="\t", dtype=str, keep_default_na=False, encoding="utf-8-sig",
                index_col=False,
            )
    except pd.errors.ParserWarning as exc:
        raise AnomalyInputError(
            f"{label}: a line has more tab-separated fields than the header line"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise AnomalyInputError(f"{label}: file is empty; expected a header line") from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise AnomalyInputError(f"{label}: not a readable TSV file ({_describe(exc)})") from exc

    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in _REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise AnomalyInputError(
            f"{label}: missing required column(s) {', '.join(missing)} "
            f"(found: {', '.join(table.columns)}); is the file tab-separated?"
        )
    table = table.apply(lambda column: column.str.strip())

    ids: list[str] = []
    groups: list[str] = []
    ages: list[float] = []
    sexes: list[Any] = []
    crs: list[Any] = []
    crs_sd: list[float] = []
    seen: dict[str, int] = {}
    no_crs: list[str] = []
    for row, record in enumerate(table.to_dict("records")):
        at = f"{label}: line {row + 2}"  # file line numbers: the header is line 1

        raw_id = record["participant_id"]
        if raw_id.lower() in _NA or raw_id == "sub-":
            raise AnomalyInputError(f"{at}: participant_id is missing")
        pid = _participant_id(raw_id)
        if not re.fullmatch(r"sub-[A-Za-z0-9]+", pid):
            raise AnomalyInputError(
                f"{at}: participant_id {raw_id!r} is not a BIDS label (sub-<letters/digits>)"
            )
        if pid in seen:
            raise AnomalyInputError(
                f"{at} ({pid}): duplicate participant_id (first on line {seen[pid]})"
            )
        seen[pid] = row + 2
        at = f"{at} ({pid})"

        group = record["group"].lower()
        if group not in _GROUPS:
            raise AnomalyInputError(
                f"{at}: group {record['group']!r} is not one of {', '.join(_GROUPS)}"
            )

        age = _parse_number(record["age"])
        if age is None or age < 0:
            raise AnomalyInputError(
                f"{at}: age {record['age']!r} is not a non-negative number (or n/a)"
            )

        sex_raw = record["sex"].lower()
        if sex_raw not in _NA and sex_raw not in _SEXES:
            raise AnomalyInputError(f"{at}: sex {record['sex']!r} is not M or F (or n/a)")
        sex = _SEXES.get(sex_raw, np.nan)

        score: Any = pd.NA
        if "crs" in table.columns and record["crs"].lower() not in _NA:
            text = record["crs"]
            value = _parse_number(text)
            if value is None:
                raise AnomalyInputError(f"{at}: crs {text!r} is not a number")
            if value != int(value):
                raise AnomalyInputError(f"{at}: crs {text!r} is not an integer")
            if not 0 <= value <= CRS_MAX:
                raise AnomalyInputError(f"{at}: crs {text!r} is out of range 0..{CRS_MAX}")
            score = int(value)
        elif group == "patient":
            no_crs.append(pid)

        sd = math.nan
        if "crs_sd" in table.columns:
            sd = _parse_number(record["crs_sd"])
            if sd is None or sd < 0:
                raise AnomalyInputError(
                    f"{at}: crs_sd {record['crs_sd']!r} is not a non-negative number (or n/a)"
                )

        ids.append(pid)
        groups.append(group)
        ages.append(age)
        sexes.append(sex)
        crs.append(score)
        crs_sd.append(sd)

    if no_crs:
        shown = ", ".join(no_crs[:10]) + (", ..." if len(no_crs) > 10 else "")
        warnings.warn(
            f"{label}: {len(no_crs)} patient(s) without a crs value ({shown}); "
            "they cannot be used to fit a CRS-R model",
            UserWarning,
            stacklevel=2,
        )

    out = pd.DataFrame(
        {
            "participant_id": pd.Series(ids, dtype=object),
            "group": pd.Series(groups, dtype=object),
            "age": pd.Series(ages, dtype=float),
            "sex": pd.Series(sexes, dtype=object),
            "crs": pd.array(crs, dtype="Int64"),
            "crs_sd": pd.Series(crs_sd, dtype=float),
        }
    )
    for column in table.columns:
        if column not in out.columns:
            out[column] = table[column].to_numpy(dtype=object)
    return out


def _parse_number(text: str) -> float | None:
    """Float value of a TSV cell; NaN for n/a; None when it is not a finite number."""
    if text.lower() in _NA:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# -------------------------------------------------------------------- subjects


@dataclass
class Subject:
    """One participant of a BIDS dataset and its images.

    Attributes
    ----------
    label : str
        Subject label without the ``sub-`` prefix ("01").
    participant_id : str
        ``"sub-" + label``.
    group : str
        "control" or "patient".
    age : float or None
        Age in years, None when unknown.
    sex : str or None
        "M", "F", or None when unknown.
    crs : int or None
        CRS-R total (0..23), None when unknown (always for controls).
    crs_sd : float or None
        Uncertainty (standard deviation) of ``crs``, None when unknown.
    images : dict of str to pathlib.Path
        Image file per modality (BIDS suffix: "T1w", "FLAIR", "pet"...).
    """

    label: str
    participant_id: str
    group: str
    age: float | None = None
    sex: str | None = None
    crs: int | None = None
    crs_sd: float | None = None
    images: dict[str, Path] = field(default_factory=dict)


def _find_images(subject_dir: Path, label: str) -> tuple[dict[str, Path], list[str]]:
    """Images per modality of one subject folder, and messages about ignored duplicates."""
    found: dict[str, list[Path]] = {}
    for datatype in ("anat", "pet"):
        for pattern in (f"{datatype}/*.nii*", f"ses-*/{datatype}/*.nii*"):
            for path in subject_dir.glob(pattern):
                name = path.name
                # Hidden files include our own atomic-write temporaries.
                if name.startswith(".") or not name.endswith(_NIFTI_EXTENSIONS):
                    continue
                if subject_from_path(name) != label or not path.is_file():
                    continue
                modality = modality_from_path(name)
                if modality is not None:
                    found.setdefault(modality, []).append(path)
    images: dict[str, Path] = {}
    notes: list[str] = []
    for modality in sorted(found):
        paths = sorted(found[modality], key=lambda p: p.relative_to(subject_dir).as_posix())
        images[modality] = paths[0]
        if len(paths) > 1:
            notes.append(
                f"sub-{label}: {len(paths)} {modality} images, using "
                f"{paths[0].relative_to(subject_dir).as_posix()} and ignoring the others"
            )
    return images, notes


def find_subjects(
    bids_dir: str | os.PathLike,
    *,
    participant_labels: Iterable[str] | None = None,
    group: str | None = None,
) -> list[Subject]:
    """List the subjects of a BIDS dataset with their images.

    Parameters
    ----------
    bids_dir : str or os.PathLike
        Dataset root. Demographics and CRS-R come from its ``participants.tsv``
        (see :func:`read_participants`). Without that file, every ``sub-*`` folder
        is taken as a patient of unknown age, sex and CRS-R, with a warning.
    participant_labels : iterable of str, optional
        Keep only these subjects; ``"01"`` and ``"sub-01"`` are both accepted.
    group : {"control", "patient"}, optional
        Keep only this group.

    Returns
    -------
    list of Subject
        Sorted by label. Images are ``sub-<l>/{anat,pet}/*.nii[.gz]`` and
        ``sub-<l>/ses-*/{anat,pet}/*.nii[.gz]``; the modality is the BIDS suffix.
        When one modality has several files (sessions, runs), the first in sorted
        order is used, with a warning. Subjects without any image are skipped with
        a warning, unless they were requested in ``participant_labels``.

    Raises
    ------
    AnomalyInputError
        If the folder does not exist, ``participants.tsv`` is invalid, a requested
        label is unknown or has no image, ``group`` is invalid, or no subject is
        left.
    """
    root = Path(bids_dir)
    label = str(bids_dir)
    if not root.exists():
        raise AnomalyInputError(f"{label}: BIDS dataset folder not found")
    if not root.is_dir():
        raise AnomalyInputError(f"{label}: is a file; expected a BIDS dataset folder")
    if group is not None and group not in _GROUPS:
        raise AnomalyInputError(f"group: {group!r} is not one of {', '.join(_GROUPS)}")

    folders = {
        p.name[4:]: p
        for p in root.glob("sub-*")
        if p.is_dir() and re.fullmatch(r"sub-[A-Za-z0-9]+", p.name)
    }
    participants_tsv = root / "participants.tsv"
    if participants_tsv.is_file():
        table = read_participants(participants_tsv)
        subjects = {
            pid[4:]: Subject(
                label=pid[4:],
                participant_id=pid,
                group=grp,
                age=None if math.isnan(age) else float(age),
                sex=sex if isinstance(sex, str) else None,
                crs=None if pd.isna(crs) else int(crs),
                crs_sd=None if math.isnan(sd) else float(sd),
            )
            for pid, grp, age, sex, crs, sd in zip(
                table["participant_id"], table["group"], table["age"], table["sex"],
                table["crs"], table["crs_sd"], strict=True,
            )
        }
        unlisted = sorted(set(folders) - set(subjects))
        if unlisted:
            warnings.warn(
                f"{participants_tsv}: ignoring {len(unlisted)} subject folder(s) not listed "
                f"in it: {', '.join('sub-' + s for s in unlisted[:10])}",
                UserWarning,
                stacklevel=2,
            )
    else:
        subjects = {
            lab: Subject(label=lab, participant_id=f"sub-{lab}", group="patient")
            for lab in folders
        }
        if subjects:
            warnings.warn(
                f"{label}: no participants.tsv; treating the {len(subjects)} sub-* folder(s) "
                "as patients with unknown age, sex and CRS-R",
                UserWarning,
                stacklevel=2,
            )

    requested: list[str] | None = None
    if participant_labels is not None:
        if isinstance(participant_labels, str):
            participant_labels = [participant_labels]
        requested = sorted({_participant_id(str(p))[4:] for p in participant_labels})
        unknown = [r for r in requested if r not in subjects]
        if unknown:
            raise AnomalyInputError(
                f"{label}: unknown participant label(s) {', '.join(unknown)}"
                f" (the dataset has {len(subjects)} subject(s))"
            )
        subjects = {r: subjects[r] for r in requested}
    if group is not None:
        subjects = {k: s for k, s in subjects.items() if s.group == group}

    result: list[Subject] = []
    without: list[str] = []
    for lab in sorted(subjects):
        subject = subjects[lab]
        if lab in folders:
            subject.images, notes = _find_images(folders[lab], lab)
            for note in notes:
                warnings.warn(note, UserWarning, stacklevel=2)
        if subject.images:
            result.append(subject)
        else:
            without.append(subject.participant_id)
    if without:
        if requested is not None:
            raise AnomalyInputError(
                f"{label}: no image found for {', '.join(without)} "
                "(expected sub-<label>/[ses-*/]anat|pet/*.nii[.gz])"
            )
        warnings.warn(
            f"{label}: skipping {len(without)} subject(s) without images: "
            f"{', '.join(without[:10])}",
            UserWarning,
            stacklevel=2,
        )
    if not result:
        which = f" in group {group!r}" if group else ""
        raise AnomalyInputError(
            f"{label}: no subject with images found{which} "
            "(expected sub-<label>/[ses-*/]anat|pet/*.nii[.gz])"
        )
    return result


# --------------------------------------------------------------- atomic writes


def _extension(name: str) -> str:
    """File extension that decides the format (".nii.gz", ".tsv", "")."""
    suffixes = Path(name).suffixes
    if len(suffixes) >= 2 and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:])
    return suffixes[-1] if suffixes else ""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; move it onto ``path`` on success.

    Parameters
    ----------
    path : str or os.PathLike
        Final file path. Missing parent folders are created.

    Yields
    ------
    pathlib.Path
        A unique hidden file in the same folder, ``.<name>.<pid>.<random>.tmp<ext>``,
        ending with the target's extension (``.nii.gz``...) so that writers that pick
        the format from the name behave as for ``path``.

    Notes
    -----
    On success the file is flushed to disk and renamed onto ``path`` with
    :func:`os.replace`, which is atomic on POSIX: readers see the old or the new
    file, never a partial one, and concurrent writers each leave a complete file.
    On any exception (including KeyboardInterrupt) the temporary file is removed
    and the exception propagates.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(
        f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp{_extension(target.name)}"
    )
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())  # the rename must not overtake the data
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_image(img: nib.spatialimages.SpatialImage, path: str | os.PathLike) -> Path:
    """Save a nibabel image atomically (format from the extension, e.g. ``.nii.gz``).

    Parameters
    ----------
    img : nibabel image
        Image to save.
    path : str or os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return Path(path)


def write_tsv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a table as a BIDS TSV (tab-separated, ``n/a`` for missing, no index).

    Parameters
    ----------
    table : pandas.DataFrame
        Table to write.
    path : str or os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", na_rep="n/a", index=False, lineterminator="\n")
    return Path(path)


def _jsonable(obj: Any) -> Any:
    """Convert numpy types, paths and non-finite floats to strict-JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [_jsonable(v) for v in items]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        # JSON has no NaN/Infinity; null is what other readers understand.
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write an object as indented JSON, atomically.

    Parameters
    ----------
    obj : object
        JSON-like data; numpy scalars and arrays, paths and sets are converted, and
        NaN/Inf become ``null`` (strict JSON). Key order is kept.
    path : str or os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    return write_text(text + "\n", path)


def write_text(text: str, path: str | os.PathLike, *, encoding: str = "utf-8") -> Path:
    """Write text to a file atomically.

    Parameters
    ----------
    text : str
        Content.
    path : str or os.PathLike
        Destination file.
    encoding : str, default="utf-8"
        Text encoding.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Write bytes to a file atomically.

    Parameters
    ----------
    data : bytes
        Content.
    path : str or os.PathLike
        Destination file.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# ------------------------------------------------------------------ output dir


def _dataset_root(path: Path) -> Path | None:
    """BIDS dataset folder holding a file: the parent of its nearest sub-* folder."""
    for parent in path.parents:
        if re.fullmatch(r"sub-[A-Za-z0-9]+", parent.name):
            return parent.parent
    return None


def check_output_dir(
    out_dir: str | os.PathLike, *, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Validate and create an output folder.

    Parameters
    ----------
    out_dir : str or os.PathLike
        Output folder; created with its parents if needed.
    inputs : iterable of str or os.PathLike
        Input folders (datasets, model folders) and files. The output folder must
        not be one of the input folders or inside one, so that inputs are never
        overwritten or polluted. For an input file inside a BIDS dataset
        (``.../sub-<l>/...``), the dataset folder counts as an input folder. The
        BIDS ``derivatives/`` folder of an input dataset is allowed, as BIDS
        recommends it for outputs.

    Returns
    -------
    pathlib.Path
        The resolved output folder.

    Raises
    ------
    AnomalyInputError
        If the output folder is inside an input, is an existing file, cannot be
        created or is not writable.
    """
    label = str(out_dir)
    out = Path(out_dir).expanduser().resolve()
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if source == out:
            raise AnomalyInputError(
                f"{label}: output folder is the input {item}; choose another one"
            )
        folder = source if source.is_dir() else _dataset_root(source)
        if folder is None:
            continue
        if out == folder or folder in out.parents:
            if (folder / "derivatives") in (out, *out.parents) and out != folder / "derivatives":
                continue
            raise AnomalyInputError(
                f"{label}: output folder is inside the input dataset {folder}; "
                f"choose a folder outside it (or under {folder / 'derivatives'})"
            )
    if out.exists() and not out.is_dir():
        raise AnomalyInputError(f"{label}: exists and is a file; expected an output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnomalyInputError(
            f"{label}: cannot create output folder ({_describe(exc)})"
        ) from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise AnomalyInputError(f"{label}: output folder is not writable")
    probe = out / f".anomaly-write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AnomalyInputError(
            f"{label}: output folder is not writable ({_describe(exc)})"
        ) from exc
    return out
