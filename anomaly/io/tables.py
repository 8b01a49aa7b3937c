"""Reading small tab-separated tables (label tables, region tables, training logs).

One place turns a table that cannot be read, or lacks a column, into a one-line
:class:`AnomalyInputError` naming the file and what it should have held.
``participants.tsv`` has its own, stricter reader (:mod:`anomaly.io.participants`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from anomaly.io.errors import AnomalyInputError

__all__ = ["check_columns", "read_table"]


def read_table(path: str | os.PathLike, what: str, *, required: Sequence[str] = (), hint: str | None = None,
               **read_csv: Any) -> pd.DataFrame:
    """Read a table with :func:`pandas.read_csv` and check its columns.

    Parameters
    ----------
    path : path
        The file.
    what : str
        What the file is, for error messages ("atlas label table").
    required : sequence of str
        Columns the table must have.
    hint : str, optional
        What the user should have given, added to the missing-column message.
    **read_csv
        Passed to :func:`pandas.read_csv` (e.g. ``sep="\\t"``, ``dtype=str``).

    Raises
    ------
    AnomalyInputError
        Unreadable file, or a required column missing.
    """
    try:
        table = pd.read_csv(path, **read_csv)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise AnomalyInputError(f"{path}: cannot read {what} ({reason})") from None
    check_columns(table, required, str(path), what, hint=hint)
    return table


def check_columns(table: pd.DataFrame, required: Sequence[str], where: str, what: str, *,
                  hint: str | None = None) -> None:
    """Refuse a table that lacks one of the ``required`` columns (one line naming them)."""
    missing = [col for col in required if col not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns))
        raise AnomalyInputError(f"{where}: {what} lacks column(s) {', '.join(missing)} "
                                f"({hint + '; ' if hint else ''}found {found})")
