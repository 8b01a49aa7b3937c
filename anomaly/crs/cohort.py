"""Labelled cohorts: the participants with a CRS-R value and a region table, as bags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly.constants import CRS_MAX
from anomaly.io import AnomalyInputError, read_participants

from .features import RegionBags, find_region_tables, load_region_bags

__all__ = ["LabelledCohort", "labelled_cohort", "participants_table"]

#: Fewest labelled patients ``fit-crs`` and ``group`` work with.
MIN_PATIENTS = 5


@dataclass
class LabelledCohort:
    """Bags and CRS-R labels of a scored cohort.

    Attributes
    ----------
    bags : RegionBags
    y : ndarray (N,)
        CRS-R totals.
    y_sd : ndarray (N,) or None
        ``crs_sd`` (None when no participant has one).
    atlas : str
        Atlas of the region tables.
    skipped : list of str
        Participants with a crs value but no region table (left out).
    """

    bags: RegionBags
    y: np.ndarray
    y_sd: np.ndarray | None
    atlas: str
    skipped: list[str] = field(default_factory=list)


def participants_table(participants: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """participants.tsv through the input gate; a DataFrame (notebooks) is normalised alike.

    Returns
    -------
    (DataFrame, str)
        The table and the name to use in error messages.
    """
    if not isinstance(participants, pd.DataFrame):
        return read_participants(participants), str(participants)
    df = participants.copy()
    if "participant_id" not in df.columns or "crs" not in df.columns:
        raise AnomalyInputError("participants: the table needs participant_id and crs columns")
    df["participant_id"] = [p if p.startswith("sub-") else f"sub-{p}" for p in df["participant_id"].astype(str)]
    crs = pd.to_numeric(df["crs"], errors="coerce")
    known = crs.dropna()
    if ((known < 0) | (known > CRS_MAX) | (known.round() != known)).any():
        raise AnomalyInputError(f"participants: crs must be an integer in 0..{CRS_MAX}")
    df["crs"] = crs.astype("Int64")
    df["crs_sd"] = pd.to_numeric(df["crs_sd"], errors="coerce") if "crs_sd" in df.columns else np.nan
    return df, "participants"


def labelled_cohort(participants: Any, scores_dir: str | os.PathLike, atlas: str | None = None) -> LabelledCohort:
    """Bags and labels of the participants with a CRS-R value and a region table.

    Parameters
    ----------
    participants : path or DataFrame
        participants.tsv (or the same table in memory) with ``crs``, optional ``crs_sd``.
    scores_dir : path
        Output of ``anomaly score``.
    atlas : str, optional
        Atlas of the region tables (automatic if only one).

    Raises
    ------
    anomaly.io.AnomalyInputError
        No labelled participant, or fewer than 5 with a region table.
    """
    scores_dir = Path(scores_dir)
    df, name = participants_table(participants)
    df = df[df["crs"].notna()]
    if df.empty:
        raise AnomalyInputError(f"{name}: no participant has a crs value")
    atlas_name, tables = find_region_tables(scores_dir, atlas=atlas)
    have = df["participant_id"].isin(tables)
    skipped = df.loc[~have, "participant_id"].tolist()
    df = df[have]
    if len(df) < MIN_PATIENTS:
        raise AnomalyInputError(f"{scores_dir}: only {len(df)} participant(s) with both a crs value and a region table "
                                f"(need >= {MIN_PATIENTS})")
    bags = load_region_bags(scores_dir, atlas=atlas_name, participant_ids=df["participant_id"].tolist())
    y = df["crs"].to_numpy(dtype=float)
    sd = df["crs_sd"].to_numpy(dtype=float) if "crs_sd" in df.columns else None
    if sd is not None and not np.isfinite(sd).any():
        sd = None
    return LabelledCohort(bags=bags, y=y, y_sd=sd, atlas=atlas_name, skipped=skipped)
