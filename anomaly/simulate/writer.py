"""Files of a simulated dataset: subject images, ground-truth masks and the tables.

MRI files are int16 (the simulated values are whole numbers, as scanners store
them), PET files float32 and masks uint8, all with MNI152 sform and qform codes.
The tables are ``participants.tsv`` (+ ``.json``), the dataset descriptions, a
``README`` and, under ``derivatives/simulation/``, ``truth.tsv`` (one row per subject:
the clinical ground truth, lesion regions, missing modalities, gains and mask sizes),
``causal_regions.json`` and ``simulation.json`` (every parameter).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from anomaly import __version__
from anomaly.constants import CRS_MAX, PET
from anomaly.io import save_image, write_json, write_text, write_tsv
from anomaly.simulate.config import (
    ATLAS,
    CAUSAL_FAMILIES,
    DISTRACTOR_REGIONS,
    SimulationConfig,
)
from anomaly.simulate.labels import clinical_row
from anomaly.simulate.subject import SimulatedSubject

__all__ = ["truth_row", "write_subject", "write_tables"]

_BIDS_VERSION = "1.9.0"
_TRUTH_FOLDER = ("derivatives", "simulation")


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """NIfTI image in mm with MNI152 sform and qform codes."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)  # 4 = MNI152
    img.set_qform(affine, code=4)
    return img


def write_subject(root: Path, label: str, subject: SimulatedSubject,
                  missing: Sequence[str], config: SimulationConfig | None = None) -> None:
    """Images of ``sub-<label>`` (less the ``missing`` modalities) and its truth masks.

    With ``config.space == "native"`` the images go through
    :func:`anomaly.simulate.native.write_native_subject` (MNI-space truth masks too).
    """
    if config is not None and config.space == "native":
        _write_native(root, label, subject, missing)
    else:
        _write_mni_images(root, label, subject, missing)
    if subject.lesion_mask is not None:
        truth_dir = root.joinpath(*_TRUTH_FOLDER, f"sub-{label}")
        for desc, mask in (("lesion", subject.lesion_mask), ("focal", subject.focal_mask),
                           ("brain", subject.brain_mask)):
            path = truth_dir / f"sub-{label}_desc-{desc}_mask.nii.gz"
            save_image(_nifti(mask.astype(np.uint8), subject.affine), path)


def _write_native(root: Path, label: str, subject: SimulatedSubject, missing: Sequence[str]) -> None:
    """The subject's images in a scanner space of their own (see :mod:`anomaly.simulate.native`)."""
    from anomaly.simulate.native import write_native_subject
    from anomaly.simulate.template import load_template

    template = load_template(float(abs(subject.affine[0, 0])))
    brain = np.zeros(template.shape, dtype=bool)
    brain[template.box] = template.mask > 0.5
    masks = {} if subject.lesion_mask is None else {"lesion": subject.lesion_mask, "focal": subject.focal_mask}
    write_native_subject(root, label, subject.images, subject.affine, brain, masks, subject.gains, missing)


def _write_mni_images(root: Path, label: str, subject: SimulatedSubject, missing: Sequence[str]) -> None:
    """The subject's images on the MNI grid."""
    for modality, data in subject.images.items():
        if modality in missing:
            continue
        folder = "pet" if modality == PET else "anat"  # BIDS datatype
        # MRI values are integers (see anomaly.simulate.scanners): int16 files, float32 for PET.
        data = data if modality == PET else data.astype(np.int16)
        path = root / f"sub-{label}" / folder / f"sub-{label}_{modality}.nii.gz"
        save_image(_nifti(data, subject.affine), path)


def truth_row(label: str, subject: SimulatedSubject, missing: Sequence[str],
              cfg: SimulationConfig) -> dict[str, Any]:
    """The row of ``truth.tsv`` of ``sub-<label>``."""
    row = clinical_row(
        f"sub-{label}", subject.group, subject.age, subject.sex, subject.global_metabolism,
        subject.damage, subject.distractors, subject.arousal, subject.awareness,
        subject.crs_true, subject.crs, cfg,
    )
    row["lesion_regions"] = ";".join(les["region"] for les in subject.lesions) or None
    row["missing_modalities"] = ";".join(missing) or None
    for modality, value in subject.gains.items():
        row["pet_scale" if modality == PET else f"{modality}_gain"] = round(value, 6)
    row["lesion_voxels"] = None if subject.lesion_mask is None else int(subject.lesion_mask.sum())
    row["focal_voxels"] = None if subject.focal_mask is None else int(subject.focal_mask.sum())
    return row


def write_tables(root: Path, rows: list[dict[str, Any]], order: Sequence[str], *, seed: int,
                 resolution: float, modalities: tuple[str, ...], label_noise_sd: float,
                 missing_fraction: float, missing_modalities: tuple[str, ...], write_crs_sd: bool,
                 config: SimulationConfig) -> None:
    """participants.tsv, dataset descriptions and the ground-truth tables.

    ``rows`` are :func:`truth_row` results in any order; ``order`` lists the
    participant ids in the order of the tables.
    """
    truth = pd.DataFrame(rows).set_index("participant_id")
    truth = truth.loc[list(order)].reset_index()
    truth["crs"] = pd.array(truth["crs"], dtype="Int64")
    _write_participants(root, truth, label_noise_sd, write_crs_sd)
    _write_raw_description(root, seed, resolution)
    deriv = root.joinpath(*_TRUTH_FOLDER)
    write_json(
        {
            "Name": "anomaly simulation ground truth",
            "BIDSVersion": _BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "anomaly.simulate", "Version": __version__}],
        },
        deriv / "dataset_description.json",
    )
    write_tsv(truth, deriv / "truth.tsv")
    write_json(
        {
            "atlas": ATLAS,
            "regions": [r for family in CAUSAL_FAMILIES.values() for r in family],
            "families": {fam: list(regions) for fam, regions in CAUSAL_FAMILIES.items()},
            "distractor_regions": list(DISTRACTOR_REGIONS),
        },
        deriv / "causal_regions.json",
    )
    write_json(
        {
            "anomaly_version": __version__,
            "seed": seed,
            "resolution_mm": resolution,
            "n_healthy": int((truth["group"] == "control").sum()),
            "n_patients": int((truth["group"] == "patient").sum()),
            "modalities": list(modalities),
            "label_noise_sd": label_noise_sd,
            "missing_fraction": missing_fraction,
            "missing_modalities": list(missing_modalities),
            "config": config.to_dict(),
        },
        deriv / "simulation.json",
    )


def _write_participants(root: Path, truth: pd.DataFrame, label_noise_sd: float,
                        write_crs_sd: bool) -> None:
    """``participants.tsv`` and its column descriptions ``participants.json``."""
    participants = truth[["participant_id", "group", "age", "sex"]].copy()
    participants["crs"] = truth["crs"]
    if write_crs_sd:
        participants["crs_sd"] = np.where(truth["group"] == "patient", label_noise_sd, np.nan)
    write_tsv(participants, root / "participants.tsv")
    columns = {
        "participant_id": {"Description": "Subject label"},
        "group": {
            "Description": "Cohort",
            "Levels": {"control": "healthy control", "patient": "coma patient"},
        },
        "age": {"Description": "Age", "Units": "year"},
        "sex": {"Description": "Sex", "Levels": {"M": "male", "F": "female"}},
        "crs": {
            "Description": f"Coma Recovery Scale-Revised total (0-{CRS_MAX}), "
            "with simulated label noise"
        },
    }
    if write_crs_sd:
        columns["crs_sd"] = {"Description": "SD of the CRS-R measurement error (points)"}
    write_json(columns, root / "participants.json")


def _write_raw_description(root: Path, seed: int, resolution: float) -> None:
    """``dataset_description.json`` and ``README`` of the raw dataset."""
    write_json(
        {
            "Name": "anomaly simulated coma cohort",
            "BIDSVersion": _BIDS_VERSION,
            "DatasetType": "raw",
            "License": "CC0",
            "Authors": ["anomaly.simulate"],
        },
        root / "dataset_description.json",
    )
    write_text(
        "Simulated cohort of healthy controls and coma patients written by anomaly.simulate "
        f"(anomaly {__version__}, seed {seed}, {resolution:g} mm, MNI152NLin2009 space).\n"
        "Images are brain-extracted; see derivatives/simulation for the ground truth.\n",
        root / "README",
    )
