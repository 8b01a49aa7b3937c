"""One subject through registration: native volumes in, MNI152 volumes and transforms out.

:func:`prepare_subject` writes, under ``PREP_DIR/sub-<l>/``::

    <datatype>/sub-<l>_space-MNI152NLin2009cAsym_desc-preproc_<suffix>.nii.gz   every volume
    anat/sub-<l>_space-T1w_desc-brain_mask.nii.gz        template brain mask pulled back to the T1w
    anat/sub-<l>_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5   (and the inverse)
    <datatype>/sub-<l>_from-<suffix>_to-T1w_mode-image_xfm.mat       rigid, per other volume
    figures/sub-<l>_desc-registration_qc.png             template edges over the warped T1w
    sub-<l>_desc-prepare_qc.json                         written last: the subject is done

The T1w goes to the template (rigid, affine, SyN); every other volume is registered
rigidly to the T1w by mutual information and resampled through both transforms in one
step. A multi-frame PET is averaged over its frames first (:func:`anomaly.io.load_image`
with ``average_frames``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from anomaly.constants import PET
from anomaly.io import (
    AnomalyInputError,
    Subject,
    atomic_path,
    load_image,
    save_image,
    subject_from_path,
    write_json,
)
from anomaly.registration.qc import plot_registration
from anomaly.registration.register import (
    MODES,
    apply_transforms,
    coregister,
    register_t1w,
)
from anomaly.registration.template import SPACE, target_images

__all__ = ["QC_SUFFIX", "is_prepared", "prepare_subject", "transform_paths"]

#: Name ending of the per-subject QC file, written last (the "done" marker).
QC_SUFFIX = "desc-prepare_qc.json"
REFERENCE = "T1w"


def transform_paths(subject_dir: Path, label: str) -> dict[str, Path]:
    """Where the T1w transforms and the native brain mask of ``sub-<label>`` are written.

    Parameters
    ----------
    subject_dir : pathlib.Path
        ``PREP_DIR/sub-<label>``.
    label : str
        Subject label without ``sub-``.

    Returns
    -------
    dict of str to pathlib.Path
        "to_mni" (T1w image to MNI), "to_native" (MNI image to the T1w) and "mask"
        (native brain mask, also the native T1w grid).
    """
    anat = subject_dir / "anat"
    return {
        "to_mni": anat / f"sub-{label}_from-T1w_to-{SPACE}_mode-image_xfm.h5",
        "to_native": anat / f"sub-{label}_from-{SPACE}_to-T1w_mode-image_xfm.h5",
        "mask": anat / f"sub-{label}_space-T1w_desc-brain_mask.nii.gz",
    }


def registration_figure_path(subject_dir: Path, label: str) -> Path:
    """Where the registration QC figure of ``sub-<label>`` is written (``PREP_DIR/sub-<label>``)."""
    return subject_dir / "figures" / f"sub-{label}_desc-registration_qc.png"


def registration_figure(image: str | Path) -> Path | None:
    """The registration QC figure that ``prepare`` wrote for the subject of a prepared image.

    Parameters
    ----------
    image : str or pathlib.Path
        ``PREP_DIR/sub-<label>/<datatype>/sub-<label>_..._desc-preproc_<suffix>.nii.gz``.

    Returns
    -------
    pathlib.Path or None
        The PNG, or None when the image does not come from ``anomaly prepare``.
    """
    path = Path(image)
    label = subject_from_path(path)
    if label is None or "desc-preproc" not in path.name:
        return None
    figure = registration_figure_path(path.parent.parent, label)
    return figure if figure.is_file() else None


def is_prepared(out_root: Path, label: str) -> bool:
    """Whether ``sub-<label>`` was prepared completely (its QC file exists)."""
    return (out_root / f"sub-{label}" / f"sub-{label}_{QC_SUFFIX}").is_file()


def _load_volumes(subject: Subject) -> dict[str, nib.Nifti1Image]:
    """Every image of the subject, native space allowed; multi-frame PET averaged."""
    if REFERENCE not in subject.images:
        raise AnomalyInputError(
            f"{subject.participant_id}: no T1w image; anomaly prepare registers every volume "
            "through the subject's T1w"
        )
    return {
        modality: load_image(path, check_mni=False, average_frames=modality == PET)
        for modality, path in subject.images.items()
    }


def prepare_subject(subject: Subject, out_root: Path, *, mode: str = "fast",
                    resolution: float = 2.0) -> dict[str, Any]:
    """Register one subject's volumes to MNI152 and write them (layout: module docstring).

    Parameters
    ----------
    subject : Subject
        From :func:`anomaly.io.find_subjects`; must have a T1w.
    out_root : pathlib.Path
        The prepared dataset folder.
    mode : {"fast", "accurate"}, default="fast"
        Registration settings (:data:`anomaly.registration.register.MODES`).
    resolution : float, default=2.0
        Voxel size (mm) of the written MNI152 images.

    Returns
    -------
    dict
        The subject's QC record (also written as ``sub-<l>_desc-prepare_qc.json``).

    Raises
    ------
    AnomalyInputError
        No T1w, an unreadable image, a 4D image that is not PET, or a failed registration.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    label = subject.label
    volumes = _load_volumes(subject)
    subject_dir = out_root / f"sub-{label}"
    _, template, mask = target_images(resolution)
    # The T1w is registered to the template at the output resolution, never finer than the mode's.
    _, fixed, _ = target_images(max(resolution, MODES[mode].template_mm))
    scratch = Path(tempfile.mkdtemp(prefix=f".sub-{label}.", dir=out_root))
    try:
        paths = transform_paths(subject_dir, label)
        forward, inverse = register_t1w(volumes[REFERENCE], fixed, MODES[mode], scratch / "t1w_",
                                        str(subject.images[REFERENCE]))
        for key, made in (("to_mni", forward), ("to_native", inverse)):
            _copy(made, paths[key])
        record = _write_volumes(subject, volumes, subject_dir, template, forward, scratch)
        native_mask = apply_transforms(mask, _file_grid(subject.images[REFERENCE]), [inverse], labels=True)
        save_image(_native_mask(native_mask), paths["mask"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    warped_t1w = nib.load(record["files"][REFERENCE])
    figure = registration_figure_path(subject_dir, label)
    plot_registration(warped_t1w, template, figure, title=f"sub-{label}: T1w in {SPACE} ({mode})")
    record.update(_similarity(warped_t1w, template, mask), participant_id=subject.participant_id,
                  registration=mode, resolution_mm=float(resolution), figure=str(figure.relative_to(out_root)),
                  native_brain_ml=_volume_ml(native_mask), seconds=round(time.perf_counter() - start, 1),
                  cpu_seconds=round(time.process_time() - cpu_start, 1))
    record["files"] = {m: str(Path(p).relative_to(out_root)) for m, p in record["files"].items()}
    write_json(record, subject_dir / f"sub-{label}_{QC_SUFFIX}")
    return record


def _write_volumes(subject: Subject, volumes: dict[str, nib.Nifti1Image], subject_dir: Path,
                   template: nib.Nifti1Image, forward: Path, scratch: Path) -> dict[str, Any]:
    """Coregister each non-T1w volume, resample all onto the template grid and save them."""
    label = subject.label
    files: dict[str, str] = {}
    for modality, img in volumes.items():
        datatype = subject.images[modality].parent.name
        transforms = [forward]
        if modality != REFERENCE:
            matrix = coregister(img, volumes[REFERENCE], scratch / f"{modality}_",
                                str(subject.images[modality]))
            _copy(matrix, subject_dir / datatype / f"sub-{label}_from-{modality}_to-T1w_mode-image_xfm.mat")
            transforms.append(matrix)  # applied first: template -> T1w -> this volume
        warped = apply_transforms(img, template, transforms)
        path = subject_dir / datatype / f"sub-{label}_space-{SPACE}_desc-preproc_{modality}.nii.gz"
        save_image(_mni_image(warped, template), path)
        files[modality] = str(path)
    return {"files": files}


def _file_grid(path: Path) -> nib.Nifti1Image:
    """An empty image on the voxel grid of a file as stored (not reoriented): the native grid."""
    header = nib.load(path)
    return nib.Nifti1Image(np.zeros(header.shape[:3], dtype=np.float32), header.affine)


def _copy(source: Path, target: Path) -> None:
    """Copy a transform file atomically (a reader never sees half of it)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _mni_image(img: nib.Nifti1Image, template: nib.Nifti1Image) -> nib.Nifti1Image:
    """float32 image on the template grid with MNI sform/qform codes."""
    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), template.affine)
    out.set_sform(template.affine, code=4)  # 4 = MNI152
    out.set_qform(template.affine, code=4)
    out.header.set_xyzt_units("mm")
    return out


def _native_mask(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """uint8 mask image in scanner coordinates."""
    out = nib.Nifti1Image((np.asarray(img.dataobj) > 0.5).astype(np.uint8), img.affine)
    out.set_sform(img.affine, code=1)
    out.set_qform(img.affine, code=1)
    return out


def _volume_ml(mask: nib.Nifti1Image) -> float:
    """Volume (ml) of the non-zero voxels of a mask."""
    voxel_ml = abs(float(np.linalg.det(mask.affine[:3, :3]))) / 1000.0
    return round(float((np.asarray(mask.dataobj) > 0.5).sum()) * voxel_ml, 1)


def _similarity(warped: nib.Nifti1Image, template: nib.Nifti1Image, mask: nib.Nifti1Image) -> dict[str, float]:
    """Correlation of the warped T1w with the template inside the brain mask."""
    inside = np.asarray(mask.dataobj) > 0
    a = np.asarray(warped.dataobj, dtype=np.float64)[inside]
    b = np.asarray(template.dataobj, dtype=np.float64)[inside]
    corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else 0.0
    return {"t1w_template_correlation": round(corr, 4)}
