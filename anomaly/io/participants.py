"""BIDS ``participants.tsv``: read and validate demographics and CRS-R scores.

One row is checked at a time and every problem is reported as an
:class:`~anomaly.io.AnomalyInputError` naming the file, the line and the participant.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly.constants import CRS_MAX
from anomaly.io.errors import AnomalyInputError, describe_error

_REQUIRED_COLUMNS = ("participant_id", "group", "age", "sex")
#: Values of the ``group`` column.
GROUPS = ("control", "patient")
_SEXES = {"m": "M", "male": "M", "f": "F", "female": "F"}
_NA = {"", "n/a"}
#: Plausible human ages in years (inclusive); anything outside is a data-entry error.
AGE_LIMITS = (0.0, 120.0)


def participant_id(value: str) -> str:
    """BIDS participant id of a label: ``"01"`` and ``"sub-01"`` both give ``"sub-01"``."""
    value = value.strip()
    return value if value.startswith("sub-") else f"sub-{value}"


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
    label = str(path)
    table = _read_table(Path(path), label)
    seen: dict[str, int] = {}
    rows: list[tuple[Any, ...]] = []
    for row, record in enumerate(table.to_dict("records")):
        at = f"{label}: line {row + 2}"  # file line numbers: the header is line 1
        pid = _check_id(record["participant_id"], at, seen)
        seen[pid] = row + 2
        rows.append((pid, *_parse_row(record, f"{at} ({pid})", table.columns)))
    # A patient without a score: no crs column, or n/a in it.
    no_crs = [pid for pid, group, _, _, score, _ in rows if group == "patient" and score is pd.NA]
    if no_crs:
        _warn_missing_crs(label, no_crs)
    return _to_frame(rows, table)


def _read_table(path: Path, label: str) -> pd.DataFrame:
    """The TSV as stripped strings, after checking that it has the required columns."""
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
    return table.apply(lambda column: column.str.strip())


def _check_id(raw_id: str, at: str, seen: dict[str, int]) -> str:
    """The participant_id of a row with its ``sub-`` prefix; refuse missing, bad or repeated ids."""
    if raw_id.lower() in _NA or raw_id == "sub-":
        raise AnomalyInputError(f"{at}: participant_id is missing")
    pid = participant_id(raw_id)
    if not re.fullmatch(r"sub-[A-Za-z0-9]+", pid):
        raise AnomalyInputError(
            f"{at}: participant_id {raw_id!r} is not a BIDS label (sub-<letters/digits>)"
        )
    if pid in seen:
        raise AnomalyInputError(
            f"{at} ({pid}): duplicate participant_id (first on line {seen[pid]})"
        )
    return pid


def _parse_row(record: dict[str, str], at: str, columns: pd.Index) -> tuple[Any, ...]:
    """Validated (group, age, sex, crs, crs_sd) of one row; ``at`` names it in messages."""
    group = record["group"].lower()
    if group not in GROUPS:
        raise AnomalyInputError(
            f"{at}: group {record['group']!r} is not one of {', '.join(GROUPS)}"
        )

    age = _parse_number(record["age"])
    if age is None:
        raise AnomalyInputError(f"{at}: age {record['age']!r} is not a non-negative number (or n/a)")
    if not (math.isnan(age) or AGE_LIMITS[0] <= age <= AGE_LIMITS[1]):
        # anomaly.qc.covariates applies the same limits to --age and library calls.
        raise AnomalyInputError(
            f"{at}: age {record['age']!r} is outside {AGE_LIMITS[0]:g}-{AGE_LIMITS[1]:g} years"
        )

    sex_raw = record["sex"].lower()
    if sex_raw not in _NA and sex_raw not in _SEXES:
        raise AnomalyInputError(f"{at}: sex {record['sex']!r} is not M or F (or n/a)")
    sex = _SEXES.get(sex_raw, np.nan)

    score: Any = pd.NA
    if "crs" in columns and record["crs"].lower() not in _NA:
        score = _parse_crs(record["crs"], at)

    sd = math.nan
    if "crs_sd" in columns:
        sd = _parse_number(record["crs_sd"])
        if sd is None or sd < 0:
            raise AnomalyInputError(
                f"{at}: crs_sd {record['crs_sd']!r} is not a non-negative number (or n/a)"
            )
    return group, age, sex, score, sd


def _parse_crs(text: str, at: str) -> int:
    """A CRS-R total: an integer in 0..CRS_MAX."""
    value = _parse_number(text)
    if value is None:
        raise AnomalyInputError(f"{at}: crs {text!r} is not a number")
    if value != int(value):
        raise AnomalyInputError(f"{at}: crs {text!r} is not an integer")
    if not 0 <= value <= CRS_MAX:
        raise AnomalyInputError(f"{at}: crs {text!r} is out of range 0..{CRS_MAX}")
    return int(value)


def _parse_number(text: str) -> float | None:
    """Float value of a TSV cell; NaN for n/a; None when it is not a finite number."""
    if text.lower() in _NA:
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _warn_missing_crs(label: str, no_crs: list[str]) -> None:
    shown = ", ".join(no_crs[:10]) + (", ..." if len(no_crs) > 10 else "")
    warnings.warn(
        f"{label}: {len(no_crs)} patient(s) without a crs value ({shown}); "
        "they cannot be used to fit a CRS-R model",
        UserWarning,
        stacklevel=3,  # the caller of read_participants
    )


def _to_frame(rows: list[tuple[Any, ...]], table: pd.DataFrame) -> pd.DataFrame:
    """The typed table: validated columns first, then the file's other columns as strings."""
    columns = list(zip(*rows, strict=True)) or [()] * 6  # a header-only file has no row
    ids, groups, ages, sexes, crs, crs_sd = (list(c) for c in columns)
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
