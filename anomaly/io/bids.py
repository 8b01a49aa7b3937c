"""BIDS datasets: file names (modality, subject label) and each subject's images.

:func:`find_subjects` lists a dataset's subjects, with the demographics and CRS-R
scores that :func:`anomaly.io.participants.read_participants` reads from its
``participants.tsv``.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from anomaly.io.errors import AnomalyInputError
from anomaly.io.images import NIFTI_EXTENSIONS
from anomaly.io.participants import GROUPS, participant_id, read_participants

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


#: BIDS datatype folders searched for images, and the suffixes read there as parametric
#: maps (None: any suffix but :data:`NOT_MAPS`). Diffusion and perfusion folders also
#: hold raw series (``_dwi``, ``_asl``), which are not maps.
DATATYPE_MAPS: dict[str, tuple[str, ...] | None] = {
    "anat": None,  # T1w, T2w, FLAIR, PD, SWI, T2starw...
    "pet": None,
    "dwi": ("ADC", "FA", "MD"),
    "perf": ("cbf",),
}
#: Suffixes that are never a parametric map: masks, segmentations, transforms, raw series.
NOT_MAPS = frozenset({"mask", "dseg", "probseg", "xfm", "dwi", "bold", "asl", "m0scan", "sbref"})
_PARAM = re.compile(r"_param-([A-Za-z0-9]+)_")


def map_modality(path: str | os.PathLike, datatype: str) -> str | None:
    """The modality of an image file found in a BIDS datatype folder, or None if it is no map.

    Parameters
    ----------
    path : str or os.PathLike
        File name, e.g. ``sub-01_ADC.nii.gz`` or ``sub-01_model-DTI_param-FA_dwimap.nii.gz``.
    datatype : str
        Its folder: a key of :data:`DATATYPE_MAPS`.

    Returns
    -------
    str or None
        The BIDS suffix (or the ``param-`` value of a ``_dwimap``), when it names a
        parametric map accepted in ``datatype``; None otherwise (``_dwi``, ``_mask``...).

    Examples
    --------
    >>> map_modality("sub-01_ADC.nii.gz", "dwi")
    'ADC'
    >>> map_modality("sub-01_dwi.nii.gz", "dwi") is None
    True
    """
    name = Path(path).name
    suffix = modality_from_path(name)
    if suffix == "dwimap":  # BIDS-derivatives diffusion model output
        match = _PARAM.search(_strip_extension(name) + "_")
        suffix = match.group(1).upper() if match else None
    if suffix is None or suffix in NOT_MAPS:
        return None
    accepted = DATATYPE_MAPS.get(datatype)
    return suffix if accepted is None or suffix in accepted else None


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
    for datatype in DATATYPE_MAPS:
        for pattern in (f"{datatype}/*.nii*", f"ses-*/{datatype}/*.nii*"):
            for path in subject_dir.glob(pattern):
                name = path.name
                # Hidden files include our own atomic-write temporaries.
                if name.startswith(".") or not name.endswith(NIFTI_EXTENSIONS):
                    continue
                if subject_from_path(name) != label or not path.is_file():
                    continue
                modality = map_modality(name, datatype)
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
        Sorted by label. Images are ``sub-<l>/[ses-*/]{anat,pet,dwi,perf}/*.nii[.gz]``;
        the modality is the BIDS suffix (see :func:`map_modality`: only ADC, FA and MD
        maps in ``dwi/``, ``cbf`` in ``perf/``; never masks, segmentations or raw series).
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
    _check_dataset(root, label, group)
    folders = {
        p.name[4:]: p
        for p in root.glob("sub-*")
        if p.is_dir() and re.fullmatch(r"sub-[A-Za-z0-9]+", p.name)
    }
    participants_tsv = root / "participants.tsv"
    if participants_tsv.is_file():
        table = read_participants(participants_tsv)
        subjects = _listed_subjects(table, participants_tsv, folders)
    else:
        subjects = _unlisted_subjects(label, folders)
    requested = _requested_labels(participant_labels, subjects, label)
    if requested is not None:
        subjects = {r: subjects[r] for r in requested}
    if group is not None:
        subjects = {k: s for k, s in subjects.items() if s.group == group}
    return _with_images(subjects, folders, label, requested is not None, group)


def _check_dataset(root: Path, label: str, group: str | None) -> None:
    """Refuse a missing dataset folder, a file, or an unknown group."""
    if not root.exists():
        raise AnomalyInputError(f"{label}: BIDS dataset folder not found")
    if not root.is_dir():
        raise AnomalyInputError(f"{label}: is a file; expected a BIDS dataset folder")
    if group is not None and group not in GROUPS:
        raise AnomalyInputError(f"group: {group!r} is not one of {', '.join(GROUPS)}")


def _listed_subjects(
    table: pd.DataFrame, participants_tsv: Path, folders: dict[str, Path]
) -> dict[str, Subject]:
    """Subjects of a read ``participants.tsv``; warns about sub-* folders not listed in it."""
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
            stacklevel=3,  # the caller of find_subjects
        )
    return subjects


def _unlisted_subjects(label: str, folders: dict[str, Path]) -> dict[str, Subject]:
    """Without ``participants.tsv``: every sub-* folder is a patient of unknown demographics."""
    subjects = {
        lab: Subject(label=lab, participant_id=f"sub-{lab}", group="patient")
        for lab in folders
    }
    if subjects:
        warnings.warn(
            f"{label}: no participants.tsv; treating the {len(subjects)} sub-* folder(s) "
            "as patients with unknown age, sex and CRS-R",
            UserWarning,
            stacklevel=3,  # the caller of find_subjects
        )
    return subjects


def _requested_labels(
    participant_labels: Iterable[str] | None, subjects: dict[str, Subject], label: str
) -> list[str] | None:
    """Sorted labels asked for (without ``sub-``), all known; None when none was asked for."""
    if participant_labels is None:
        return None
    if isinstance(participant_labels, str):
        participant_labels = [participant_labels]
    requested = sorted({participant_id(str(p))[4:] for p in participant_labels})
    unknown = [r for r in requested if r not in subjects]
    if unknown:
        raise AnomalyInputError(
            f"{label}: unknown participant label(s) {', '.join(unknown)}"
            f" (the dataset has {len(subjects)} subject(s))"
        )
    return requested


def _with_images(
    subjects: dict[str, Subject], folders: dict[str, Path], label: str,
    requested: bool, group: str | None,
) -> list[Subject]:
    """Attach each subject's images; skip (or, if ``requested``, refuse) those without any."""
    result: list[Subject] = []
    without: list[str] = []
    for lab in sorted(subjects):
        subject = subjects[lab]
        if lab in folders:
            subject.images, notes = _find_images(folders[lab], lab)
            for note in notes:
                warnings.warn(note, UserWarning, stacklevel=3)  # the caller of find_subjects
        if subject.images:
            result.append(subject)
        else:
            without.append(subject.participant_id)
    if without:
        if requested:
            raise AnomalyInputError(
                f"{label}: no image found for {', '.join(without)} "
                "(expected sub-<label>/[ses-*/]anat|pet|dwi|perf/*.nii[.gz])"
            )
        warnings.warn(
            f"{label}: skipping {len(without)} subject(s) without images: "
            f"{', '.join(without[:10])}",
            UserWarning,
            stacklevel=3,  # the caller of find_subjects
        )
    if not result:
        which = f" in group {group!r}" if group else ""
        raise AnomalyInputError(
            f"{label}: no subject with images found{which} "
            "(expected sub-<label>/[ses-*/]anat|pet|dwi|perf/*.nii[.gz])"
        )
    return result
