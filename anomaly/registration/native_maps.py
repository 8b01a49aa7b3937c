"""MNI-space maps back in a subject's native T1w space (``anomaly score --native-maps``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from anomaly.io import AnomalyInputError, read_map, save_image
from anomaly.registration.register import apply_transforms
from anomaly.registration.subject import transform_paths

__all__ = ["find_prepared_subject", "map_to_native"]


def find_prepared_subject(image: str | Path, label: str) -> Path | None:
    """The ``PREP_DIR/sub-<label>`` folder holding a prepared image, or None.

    Parameters
    ----------
    image : str or pathlib.Path
        One of the subject's prepared images (``PREP_DIR/sub-<l>/<datatype>/...``).
    label : str
        Subject label without ``sub-``.

    Returns
    -------
    pathlib.Path or None
        The subject folder when it has the inverse transform and the native mask.
    """
    for folder in Path(image).resolve().parents:
        if folder.name == f"sub-{label}":
            paths = transform_paths(folder, label)
            return folder if paths["to_native"].is_file() and paths["mask"].is_file() else None
    return None


def map_to_native(map_path: Path, subject_dir: Path, label: str, out_path: Path) -> Path:
    """Resample one MNI-space map onto the subject's native T1w grid.

    Parameters
    ----------
    map_path : pathlib.Path
        Statistical map in MNI152 space (z or anomaly map).
    subject_dir : pathlib.Path
        The prepared subject folder (see :func:`find_prepared_subject`).
    label : str
        Subject label without ``sub-``.
    out_path : pathlib.Path
        Native-space map to write.

    Returns
    -------
    pathlib.Path
        ``out_path``.

    Raises
    ------
    AnomalyInputError
        If the transforms of the subject are missing.
    """
    paths = transform_paths(subject_dir, label)
    if not paths["to_native"].is_file():
        raise AnomalyInputError(f"{paths['to_native']}: transform not found; run anomaly prepare again")
    stat = read_map(map_path, str(map_path), finite=True)
    reference = nib.load(paths["mask"])
    native = apply_transforms(stat, reference, [paths["to_native"]])
    out = nib.Nifti1Image(np.asarray(native.dataobj, dtype=np.float32), reference.affine)
    out.set_sform(reference.affine, code=1)
    out.set_qform(reference.affine, code=1)
    return save_image(out, out_path)
