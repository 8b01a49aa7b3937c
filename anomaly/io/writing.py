"""Everything the toolkit writes: atomic writes and output folders.

Every output (image, TSV, JSON, text, bytes) goes through :func:`atomic_path`, so that an
interrupted run never leaves a half-written file; :func:`jsonable` turns numpy values,
paths and non-finite floats into strict-JSON values. :func:`check_output_dir` validates and creates an output folder
that is writable and never inside an input.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from anomaly.io.errors import AnomalyInputError, describe_error

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
        if type(img) in (nib.Nifti1Image, nib.Nifti2Image) and _extension(Path(path).name) == ".nii.gz":
            _save_nifti_gz(img, tmp)
        else:
            nib.save(img, tmp)
    return Path(path)


#: zlib settings of the ``.nii.gz`` files written: level 1 (nibabel's default too) with
#: run-length matching only (``Z_RLE``). On float32 maps this compresses twice as fast
#: as nibabel's gzip and the files are as small: their bytes rarely repeat at a distance,
#: while the long runs of zeros around the brain are runs.
GZIP_LEVEL, GZIP_STRATEGY = 1, zlib.Z_RLE


def _save_nifti_gz(img: nib.Nifti1Image, path: Path) -> None:
    """Write a NIfTI image as ``.nii.gz``: nibabel's bytes, compressed in one pass.

    The decompressed file is byte for byte what ``nib.save`` writes (tested); only the
    compression differs (:data:`GZIP_LEVEL`, :data:`GZIP_STRATEGY`).
    """
    buffer = io.BytesIO()
    img.to_file_map(img.make_file_map({"image": buffer}))
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31, 8, GZIP_STRATEGY)  # wbits 31: gzip format
    with open(path, "wb") as handle:
        handle.write(compressor.compress(buffer.getbuffer()))
        handle.write(compressor.flush())


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


def jsonable(obj: Any) -> Any:
    """Convert numpy types, paths and non-finite floats to strict-JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=str) if isinstance(obj, (set, frozenset)) else obj
        return [jsonable(v) for v in items]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
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
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
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
        _check_outside_input(out, item, label)
    if out.exists() and not out.is_dir():
        raise AnomalyInputError(f"{label}: exists and is a file; expected an output folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AnomalyInputError(
            f"{label}: cannot create output folder ({describe_error(exc)})"
        ) from exc
    _check_writable(out, label)
    return out


def _check_outside_input(out: Path, item: str | os.PathLike, label: str) -> None:
    """Refuse an output folder that is an input or inside an input folder or dataset."""
    source = Path(item).expanduser().resolve()
    if source == out:
        raise AnomalyInputError(
            f"{label}: output folder is the input {item}; choose another one"
        )
    folder = source if source.is_dir() else _dataset_root(source)
    if folder is None:
        return
    if out == folder or folder in out.parents:
        # BIDS recommends <dataset>/derivatives/<pipeline> for outputs.
        if (folder / "derivatives") in (out, *out.parents) and out != folder / "derivatives":
            return
        raise AnomalyInputError(
            f"{label}: output folder is inside the input dataset {folder}; "
            f"choose a folder outside it (or under {folder / 'derivatives'})"
        )


def _check_writable(out: Path, label: str) -> None:
    """Refuse a folder we cannot write to (permissions, read-only file system...)."""
    if not os.access(out, os.W_OK | os.X_OK):
        raise AnomalyInputError(f"{label}: output folder is not writable")
    probe = out / f".anomaly-write-test.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AnomalyInputError(
            f"{label}: output folder is not writable ({describe_error(exc)})"
        ) from exc
