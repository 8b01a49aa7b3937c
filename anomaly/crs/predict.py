"""CRS-R predictions of a fitted model: point, interval, level and attention tables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from anomaly.io import AnomalyInputError

from .features import RegionBags, bags_from_tables
from .modelio import CRSModel, load_crs_model

__all__ = ["align_to_model", "cohort_attention", "crs_level", "predict_from_tables", "predict_table"]


def crs_level(pred: Sequence[float], mcs_cut: float = 8) -> list[str]:
    """``"MCS-like"`` for predictions >= ``mcs_cut``, else ``"UWS-like"``."""
    return ["MCS-like" if p >= mcs_cut else "UWS-like" for p in np.asarray(pred, dtype=float)]


def align_to_model(model: CRSModel, bags: RegionBags) -> RegionBags:
    """``bags`` in the model's region / feature / subject-level layout (absent ones missing)."""
    est = model.estimator
    return bags.align(region_index=est.region_index_, feature_names=est.feature_names_,
                      global_feature_names=est.global_feature_names_)


def predict_table(model: CRSModel, bags: RegionBags) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predictions and attention of every bag (aligned to the model first).

    Returns
    -------
    (DataFrame, DataFrame)
        participant_id, crs_pred, crs_lower, crs_upper, crs_pred_sd (ensemble spread),
        crs_level; and participant_id, index, name, attention (one row per region).
    """
    est = model.estimator
    bags = align_to_model(model, bags)
    pred, lo, hi = model.predict_interval(bags)
    _, spread = est.predict(bags, return_std=True)
    attention = est.attention(bags)
    df = pd.DataFrame({"participant_id": bags.participant_ids, "crs_pred": pred, "crs_lower": lo, "crs_upper": hi,
                       "crs_pred_sd": spread, "crs_level": crs_level(pred, model.mcs_cut)})
    n, R = attention.shape
    att_df = pd.DataFrame({
        "participant_id": np.repeat(bags.participant_ids, R),
        "index": np.tile(est.region_index_, n),
        "name": np.tile(np.asarray(est.region_names_, dtype=object), n),
        "attention": attention.ravel(),
    })
    return df, att_df


def cohort_attention(model: CRSModel, bags: RegionBags) -> pd.DataFrame:
    """Cohort mean and SD of the attention per region (``attention_rel``: mean x R)."""
    est = model.estimator
    att = est.attention(align_to_model(model, bags))
    R = att.shape[1]
    return pd.DataFrame({"index": est.region_index_, "name": est.region_names_, "attention_mean": att.mean(0),
                         "attention_sd": att.std(0), "attention_rel": att.mean(0) * R, "n": len(att)})


def predict_from_tables(model: CRSModel | str | os.PathLike, tables: Mapping[str, pd.DataFrame], *,
                        global_values: Mapping[str, float] | None = None, n_top: int = 5) -> dict[str, Any]:
    """CRS-R estimate for ONE freshly scored subject (used by ``anomaly score --crs-model``).

    Parameters
    ----------
    model : CRSModel or path
        A loaded model (:func:`~anomaly.crs.load_crs_model`) or its folder.
    tables : mapping
        Atlas name -> the subject's region table (as written to ``*_regions.tsv``).
        The model's atlas is used; a single table is used whatever its name.
    global_values : mapping, optional
        Subject-level values (e.g. ``global_cortical_pet_percent``); missing ones are
        treated as missing inputs.
    n_top : int, default=5
        Regions with the highest attention to list.

    Returns
    -------
    dict
        JSON-ready: crs_pred, crs_lower, crs_upper, interval_level, crs_level,
        crs_pred_sd, top_attention_regions.
    """
    if not isinstance(model, CRSModel):
        model = load_crs_model(model)
    if model.atlas in tables:
        table = tables[model.atlas]
    elif len(tables) == 1:
        table = next(iter(tables.values()))
    else:
        raise AnomalyInputError(f"CRS model atlas {model.atlas!r} is not among the scored atlases ({', '.join(tables)})")
    est = model.estimator
    bags = bags_from_tables([table], participant_ids=["sub-x"], global_values=[dict(global_values or {})],
                            atlas=model.atlas, where="region table")
    bags = align_to_model(model, bags)
    pred, lo, hi = model.predict_interval(bags)
    _, spread = est.predict(bags, return_std=True)
    att = est.attention(bags)[0]
    top = np.argsort(-att)[:n_top]
    return {
        "crs_pred": round(float(pred[0]), 3),
        "crs_lower": None if not np.isfinite(lo[0]) else round(float(lo[0]), 3),
        "crs_upper": None if not np.isfinite(hi[0]) else round(float(hi[0]), 3),
        "interval_level": None if model.alpha is None else round(1.0 - float(model.alpha), 3),
        "crs_level": crs_level(pred, model.mcs_cut)[0],
        "crs_pred_sd": round(float(spread[0]), 3),
        "top_attention_regions": ", ".join(f"{est.region_names_[i]} ({att[i]:.3f})" for i in top),
    }
