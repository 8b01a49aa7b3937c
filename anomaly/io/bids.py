"""BIDS datasets: file names, participants.tsv and the subjects' images.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly.constants import CRS_MAX
from anomaly.io.errors import AnomalyInputError, describe_error
from anomaly.io.images import NIFTI_EXTENSIONS

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
        raise AnomalyInputError(f"{label}: not a readable TSV file ({describe_error(exc)})") from exc

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
                if name.startswith(".") or not name.endswith(NIFTI_EXTENSIONS):
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
