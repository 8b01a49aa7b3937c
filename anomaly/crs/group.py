"""Group analysis: region-wise association of anomaly with the CRS-R.

A mass-univariate complement to the MIL attention: for every region and feature, the
Spearman correlation with the CRS-R across patients, with Benjamini-Hochberg FDR
control over all tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, spearmanr

from .features import RegionBags

__all__ = ["band_label", "benjamini_hochberg", "crs_bands", "region_correlations"]


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values).

    :func:`scipy.stats.false_discovery_control` (``method="bh"``) on the finite
    p-values: rejecting ``q <= level`` controls the FDR at ``level`` for independent or
    positively dependent tests. NaN p-values (untestable regions) are left out of the
    correction and stay NaN.
    """
    p = np.asarray(pvalues, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        q[ok] = false_discovery_control(p[ok], method="bh")
    return q


def region_correlations(bags: RegionBags, y: Sequence[float], *, features: Sequence[str] = ("anomaly_mean", "pet_z_mean"),
                        fdr: float = 0.05, min_n: int = 5) -> pd.DataFrame:
    """Spearman correlation of each region's feature with the CRS-R, with BH-FDR.

    Parameters
    ----------
    bags : RegionBags
    y : array-like (N,)
        CRS-R labels of the bags.
    features : sequence of str
        Region-table columns to test (those absent from ``bags`` are skipped).
    fdr : float, default=0.05
        Level for the ``significant`` column; the correction runs over all regions and
        features together.
    min_n : int, default=5
        Regions with fewer patients with a value get NaN.

    Returns
    -------
    DataFrame
        index, name, feature, n, rho, p, q, significant.
    """
    y = np.asarray(y, dtype=float)
    rows = []
    for feat in features:
        if feat not in bags.feature_names:
            continue
        X = bags.feature(feat)
        for r, (index, name) in enumerate(zip(bags.region_index, bags.region_names)):
            x = X[:, r]
            ok = np.isfinite(x) & np.isfinite(y)
            rho = p = np.nan
            if ok.sum() >= min_n and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = spearmanr(x[ok], y[ok])
                rho, p = float(res.statistic), float(res.pvalue)
            rows.append({"index": int(index), "name": name, "feature": feat, "n": int(ok.sum()), "rho": rho, "p": p})
    df = pd.DataFrame(rows, columns=["index", "name", "feature", "n", "rho", "p"])
    df["q"] = benjamini_hochberg(df["p"].to_numpy()) if len(df) else []
    df["significant"] = (df["q"] <= fdr).astype(bool) if len(df) else []
    return df


def band_label(band: tuple[int, int]) -> str:
    """``(0, 7) -> "0to7"`` (a BIDS-friendly entity value)."""
    return f"{int(band[0])}to{int(band[1])}"


def crs_bands(y: Sequence[float], bands: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Boolean membership of each label in each inclusive CRS-R band."""
    y = np.asarray(y, dtype=float)
    return {band_label(b): (y >= b[0]) & (y <= b[1]) for b in bands}
