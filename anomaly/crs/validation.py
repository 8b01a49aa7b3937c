"""Small-cohort validation: metrics with bootstrap intervals, (nested) cross-validation,
baselines and conformal prediction intervals.

With ~50 patients every number needs an interval and a baseline next to it: the
training-fold mean (what a regressor that learned nothing achieves), ridge regression
on the same region features (what a linear model achieves) and the seven-parameter
arousal x awareness model (:mod:`anomaly.crs.hypothesis`, what physiology alone
achieves). Models are compared by paired bootstrap differences (the interval of the
difference on the same resampled patients), not by two overlapping intervals.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.metrics import cohen_kappa_score

from anomaly.constants import CRS_LEVELS, CRS_MAX

from .conformal import OBSERVED, CVPlusIntervals, hide_groups, modality_groups
from .features import RegionBags, as_region_bags
from .hypothesis import HypothesisBaseline
from .model import MILRegressor

__all__ = [
    "METRICS",
    "CVResult",
    "MeanBaseline",
    "RidgeBaseline",
    "bootstrap_metrics",
    "conformal_quantile",
    "cross_validate",
    "make_splits",
    "paired_differences",
    "param_candidates",
    "prediction_interval",
    "quadratic_weighted_kappa",
    "regression_metrics",
    "tune_params",
]

METRICS = ("mae", "rmse", "spearman", "qwk", "auroc")
#: Baselines cross-validated beside the MIL regressor, in the order tables show them.
BASELINES = ("ridge", "hypothesis", "mean")


# --------------------------------------------------------------------------- metrics
def _round_levels(pred: np.ndarray, n_levels: int = CRS_LEVELS) -> np.ndarray:
    return np.clip(np.rint(pred), 0, n_levels - 1).astype(int)


def quadratic_weighted_kappa(y_true: Sequence[float], y_pred: Sequence[float], *, n_levels: int = CRS_LEVELS) -> float:
    """Cohen's kappa with quadratic weights on levels 0..K-1.

    Predictions are rounded and clipped to the levels first, then
    :func:`sklearn.metrics.cohen_kappa_score` (``weights="quadratic"``) scores them on
    the full scale of levels. NaN when undefined (all labels and predictions on one
    level).
    """
    a = _round_levels(np.asarray(y_true, dtype=float), n_levels)
    b = _round_levels(np.asarray(y_pred, dtype=float), n_levels)
    return _qwk_int(a, b, n_levels)


def _qwk_int(a: np.ndarray, b: np.ndarray, n_levels: int) -> float:
    # labels= fixes the weights to the whole scale (not only the levels observed).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined kappa: NaN, as documented
        return float(cohen_kappa_score(a, b, weights="quadratic", labels=np.arange(n_levels),
                                       replace_undefined_by=np.nan))


def _auroc_rows(pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Row-wise Mann-Whitney AUROC (ties count 1/2); NaN where a class is absent."""
    ranks = rankdata(score, axis=-1)
    n1 = pos.sum(-1)
    n0 = pos.shape[-1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((ranks * pos).sum(-1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)
    return np.where((n1 > 0) & (n0 > 0), auc, np.nan)


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman correlation; NaN where either row is constant."""
    ra = rankdata(a, axis=-1)
    rb = rankdata(b, axis=-1)
    ra = ra - ra.mean(-1, keepdims=True)
    rb = rb - rb.mean(-1, keepdims=True)
    denom = np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(-1) / denom, np.nan)


def _metric_rows(y: np.ndarray, pred: np.ndarray, mcs_cut: float, n_levels: int) -> dict[str, np.ndarray]:
    """All metrics for each row of (B, n) label/prediction arrays."""
    err = pred - y
    yi = _round_levels(y, n_levels)
    pi = _round_levels(pred, n_levels)
    return {
        "mae": np.abs(err).mean(-1),
        "rmse": np.sqrt((err**2).mean(-1)),
        "spearman": _spearman_rows(y, pred),
        "qwk": np.array([_qwk_int(a, b, n_levels) for a, b in zip(yi, pi)]),
        "auroc": _auroc_rows((y >= mcs_cut).astype(float), pred),
    }


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float], *, mcs_cut: float = 8,
                       n_levels: int = CRS_LEVELS) -> dict[str, float]:
    """MAE, RMSE, Spearman rho, quadratic weighted kappa and AUROC for ``crs >= mcs_cut``.

    Parameters
    ----------
    y_true, y_pred : array-like (n,)
        CRS-R labels and continuous predictions.
    mcs_cut : float, default=8
        Labels ``>= mcs_cut`` are the positive (MCS-level) class for the AUROC, which
        ranks patients by their continuous prediction.
    """
    y = np.asarray(y_true, dtype=float)[None]
    p = np.asarray(y_pred, dtype=float)[None]
    return {k: float(v[0]) for k, v in _metric_rows(y, p, mcs_cut, n_levels).items()}


def bootstrap_metrics(y_true: Sequence[float], y_pred: Sequence[float] | Mapping[str, Sequence[float]], *,
                      n_bootstrap: int = 1000, ci: float = 0.95, seed: int = 0, mcs_cut: float = 8,
                      n_levels: int = CRS_LEVELS) -> pd.DataFrame:
    """Metrics with percentile bootstrap intervals (patients resampled with replacement).

    Parameters
    ----------
    y_true : array-like (n,)
    y_pred : array-like (n,) or mapping model -> array-like (n,) or (n_repeats, n)
        Several models are resampled with the *same* draws, so their intervals are
        comparable. A 2-D prediction (repeated CV) averages each metric over repeats.
    n_bootstrap : int, default=1000
    ci : float, default=0.95
    seed : int, default=0

    Returns
    -------
    DataFrame
        Columns model, metric, estimate, ci_low, ci_high (draws where a metric is
        undefined, e.g. one class only for the AUROC, are skipped).
    """
    y = np.asarray(y_true, dtype=float)
    preds = {"model": y_pred} if not isinstance(y_pred, Mapping) else dict(y_pred)
    n = y.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_bootstrap, n))
    rows = []
    lo_q, hi_q = 50 * (1 - ci), 100 - 50 * (1 - ci)
    for model, pred in preds.items():
        p = np.asarray(pred, dtype=float)
        p = p[None] if p.ndim == 1 else p  # (repeats, n)
        est = {k: [] for k in METRICS}
        draws = {k: [] for k in METRICS}
        for rep in p:
            for k, v in _metric_rows(y[None], rep[None], mcs_cut, n_levels).items():
                est[k].append(v[0])
            for k, v in _metric_rows(y[idx], rep[idx], mcs_cut, n_levels).items():
                draws[k].append(v)
        for k in METRICS:
            d = np.mean(draws[k], axis=0)
            d = d[np.isfinite(d)]
            rows.append({
                "model": model, "metric": k, "estimate": float(np.mean(est[k])),
                "ci_low": float(np.percentile(d, lo_q)) if d.size else float("nan"),
                "ci_high": float(np.percentile(d, hi_q)) if d.size else float("nan"),
            })
    return pd.DataFrame(rows)


def paired_differences(y_true: Sequence[float], y_pred: Mapping[str, Sequence[float]], *, reference: str = "mil",
                       metrics: Sequence[str] = ("mae", "qwk"), n_bootstrap: int = 1000, ci: float = 0.95,
                       seed: int = 0, mcs_cut: float = 8, n_levels: int = CRS_LEVELS) -> pd.DataFrame:
    """Paired bootstrap differences ``metric(reference) - metric(other)`` for every other model.

    Each draw resamples patients once and scores every model on the same patients, so
    the interval is that of the difference itself: a model is better than a baseline
    when the whole interval lies on the good side of 0 (below 0 for the MAE, above for
    the QWK), which two separately overlapping intervals cannot tell.

    Parameters
    ----------
    y_true : array-like (n,)
    y_pred : mapping model -> array-like (n,) or (n_repeats, n)
        Must contain ``reference``; a 2-D prediction averages each metric over repeats.
    reference : str, default="mil"
    metrics : sequence of str, default=("mae", "qwk")
        Names from :data:`METRICS`.
    n_bootstrap, ci, seed, mcs_cut, n_levels
        As in :func:`bootstrap_metrics` (the same seed gives the same draws).

    Returns
    -------
    DataFrame
        Columns model, metric, difference, ci_low, ci_high (one row per other model and
        metric; draws where a metric is undefined are skipped).
    """
    y = np.asarray(y_true, dtype=float)
    idx = np.random.default_rng(seed).integers(0, y.size, size=(n_bootstrap, y.size))

    def scored(pred: Sequence[float]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        p = np.asarray(pred, dtype=float)
        p = p[None] if p.ndim == 1 else p
        point = [_metric_rows(y[None], rep[None], mcs_cut, n_levels) for rep in p]
        draws = [_metric_rows(y[idx], rep[idx], mcs_cut, n_levels) for rep in p]
        return ({k: float(np.mean([d[k][0] for d in point])) for k in metrics},
                {k: np.mean([d[k] for d in draws], axis=0) for k in metrics})

    ref_point, ref_draws = scored(y_pred[reference])
    lo_q, hi_q = 50 * (1 - ci), 100 - 50 * (1 - ci)
    rows = []
    for model, pred in y_pred.items():
        if model == reference:
            continue
        point, draws = scored(pred)
        for k in metrics:
            d = ref_draws[k] - draws[k]
            d = d[np.isfinite(d)]
            rows.append({"model": model, "metric": k, "difference": ref_point[k] - point[k],
                         "ci_low": float(np.percentile(d, lo_q)) if d.size else float("nan"),
                         "ci_high": float(np.percentile(d, hi_q)) if d.size else float("nan")})
    return pd.DataFrame(rows, columns=["model", "metric", "difference", "ci_low", "ci_high"])


# --------------------------------------------------------------------------- conformal
def conformal_quantile(residuals: Sequence[float], alpha: float = 0.1) -> float:
    """Split-conformal radius from out-of-sample absolute residuals.

    The ``ceil((1 - alpha)(n + 1))``-th smallest ``|r|`` (the ``(1 - alpha)(1 + 1/n)``
    empirical quantile). Under exchangeability ``[pred - q, pred + q]`` covers a new
    patient's label with probability >= 1 - alpha. ``inf`` if n is too small.
    """
    r = np.sort(np.abs(np.asarray(residuals, dtype=float)[np.isfinite(residuals)]))
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    k = math.ceil((1 - alpha) * (r.size + 1))
    return float(r[k - 1]) if 1 <= k <= r.size else float("inf")


def prediction_interval(pred: Sequence[float], q: float, *, n_levels: int = CRS_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """``[pred - q, pred + q]`` clipped to 0..K-1."""
    p = np.asarray(pred, dtype=float)
    return np.clip(p - q, 0, n_levels - 1), np.clip(p + q, 0, n_levels - 1)


# --------------------------------------------------------------------------- baselines
def _flatten(bags: RegionBags) -> np.ndarray:
    X = bags.features.reshape(len(bags), -1)
    if bags.global_features is not None:
        X = np.concatenate([X, bags.global_features], axis=1)
    return X.astype(np.float64)


class MeanBaseline(RegressorMixin, BaseEstimator):
    """Predicts the training-fold mean CRS-R for everyone.

    Read its MAE/RMSE only: under leave-one-out the prediction ``(sum(y) - y_i) / (n - 1)``
    decreases with ``y_i``, so its Spearman is -1 and its AUROC 0 by construction.
    """

    def fit(self, bags: RegionBags | np.ndarray, y: Sequence[float], y_sd: Any = None) -> MeanBaseline:
        self.mean_ = float(np.mean(y))
        return self

    def predict(self, bags: RegionBags | np.ndarray) -> np.ndarray:
        return np.full(len(as_region_bags(bags)), self.mean_)


class RidgeBaseline(RegressorMixin, BaseEstimator):
    """Ridge regression on the flattened region features (+ global values).

    Features are standardised with training statistics, missing values imputed with
    the training means (i.e. 0 after standardisation) and the penalty chosen by
    efficient leave-one-out inside the training data (RidgeCV), so cross-validating
    this baseline is nested by construction.

    Parameters
    ----------
    alphas : sequence of float
    """

    def __init__(self, alphas: Sequence[float] = tuple(np.logspace(-1, 5, 13))) -> None:
        self.alphas = alphas

    def fit(self, bags: RegionBags | np.ndarray, y: Sequence[float], y_sd: Any = None) -> RidgeBaseline:
        from sklearn.linear_model import RidgeCV

        X = _flatten(as_region_bags(bags))
        with np.errstate(invalid="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(X, 0)
                std = np.nanstd(X, 0)
        self.mean_ = np.where(np.isfinite(mean), mean, 0.0)
        self.scale_ = np.where(np.isfinite(std) & (std > 1e-8), std, 1.0)
        self.ridge_ = RidgeCV(alphas=np.asarray(self.alphas, dtype=float)).fit(self._z(X), np.asarray(y, dtype=float))
        return self

    def _z(self, X: np.ndarray) -> np.ndarray:
        z = (X - self.mean_) / self.scale_
        return np.where(np.isfinite(z), z, 0.0)

    def predict(self, bags: RegionBags | np.ndarray) -> np.ndarray:
        X = _flatten(as_region_bags(bags))
        return np.clip(self.ridge_.predict(self._z(X)), 0, CRS_MAX)


# --------------------------------------------------------------------------- CV
def make_splits(n: int, cv: str | int = "loo", *, seed: int = 0) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Train/test index splits grouped by repeat.

    Parameters
    ----------
    cv : str or int
        ``"loo"`` (leave-one-out), ``"kfold:K"``, ``"kfold:KxR"`` (K folds repeated R
        times with different shuffles) or an int K.

    Returns
    -------
    list (repeats) of list (folds) of (train_idx, test_idx)
    """
    from sklearn.model_selection import KFold, LeaveOneOut

    spec = str(cv).strip().lower()
    if spec == "loo":
        return [list(LeaveOneOut().split(np.zeros(n)))]
    if spec.isdigit():
        spec = f"kfold:{spec}"
    if spec.startswith("kfold:"):
        body = spec.split(":", 1)[1]
        k_str, _, r_str = body.partition("x")
        try:
            k, r = int(k_str), int(r_str or 1)
        except ValueError:
            raise ValueError(f"cv: expected 'loo', 'kfold:K' or 'kfold:KxR', got {cv!r}") from None
        if not 2 <= k <= n or r < 1:
            raise ValueError(f"cv: need 2 <= K <= {n} folds and R >= 1 repeats, got {cv!r}")
        return [list(KFold(k, shuffle=True, random_state=seed + rep).split(np.zeros(n))) for rep in range(r)]
    raise ValueError(f"cv: expected 'loo', 'kfold:K' or 'kfold:KxR', got {cv!r}")


def _make_estimator(estimator: Any) -> Callable[[], Any]:
    if estimator is None:
        return MILRegressor
    if isinstance(estimator, Mapping):
        params = dict(estimator)
        return lambda: MILRegressor(**params)
    if isinstance(estimator, BaseEstimator):
        return lambda: clone(estimator)
    if callable(estimator):
        return estimator
    raise TypeError(f"estimator must be None, a params dict, an estimator or a factory, got {type(estimator).__name__}")


def _fit_predict(factory: Callable[[], Any], bags: RegionBags, y: np.ndarray, y_sd: np.ndarray | None,
                 train: np.ndarray, test: np.ndarray, params: Mapping[str, Any] | None = None) -> tuple[Any, np.ndarray]:
    est = factory()
    if params:
        est.set_params(**params)
    est.fit(bags.subset(train), y[train], None if y_sd is None else y_sd[train])
    return est, est.predict(bags.subset(test))


#: What :func:`tune_params` chooses among: a grid (name -> values) or a list of
#: candidate parameter sets (e.g. whole configurations that differ in several keys).
ParamGrid = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]


def param_candidates(param_grid: ParamGrid) -> list[dict[str, Any]]:
    """Every parameter set of a grid (their product), or the candidate list as given.

    Parameters
    ----------
    param_grid : mapping or sequence of mappings
        ``{"loss": ["mae", "mse"]}`` or ``[{"loss": "mae"}, {"loss": "mse", "lds": True}]``.
    """
    if isinstance(param_grid, Mapping):
        keys = list(param_grid)
        return [dict(zip(keys, values)) for values in itertools.product(*(param_grid[k] for k in keys))]
    return [dict(c) for c in param_grid]


def tune_params(bags: RegionBags, y: np.ndarray, estimator: Any, param_grid: ParamGrid, *,
                y_sd: np.ndarray | None = None, cv: str = "kfold:5", seed: int = 0) -> dict[str, Any]:
    """The parameter set with the lowest cross-validated MAE (the inner loop of nested CV).

    Parameters
    ----------
    bags : RegionBags
        The (outer training fold's) bags.
    y : ndarray (N,)
        Their labels.
    estimator : MILRegressor, dict of params, factory or None
        The base model; each candidate's parameters are set on a fresh copy.
    param_grid : mapping or sequence of mappings
        A grid or a list of candidates (:func:`param_candidates`); ties go to the first.
    y_sd : ndarray (N,), optional
        Label SDs passed to ``fit``.
    cv : str, default="kfold:5"
        Inner splits (:func:`make_splits`).
    seed : int, default=0
        Inner fold shuffling.
    """
    factory = _make_estimator(estimator)
    best, best_mae = None, np.inf
    splits = [s for rep in make_splits(len(y), cv, seed=seed) for s in rep]
    for params in param_candidates(param_grid):
        errs = []
        for train, test in splits:
            _, pred = _fit_predict(factory, bags, y, y_sd, train, test, params)
            errs.append(np.abs(pred - y[test]))
        mae = float(np.mean(np.concatenate(errs)))
        if mae < best_mae - 1e-12:
            best, best_mae = params, mae
    return dict(best or {})


def _run_fold(models: Mapping[str, Callable[[], Any]], bags: RegionBags, y: np.ndarray, sd: np.ndarray | None,
              train: np.ndarray, test: np.ndarray, *, param_grid: ParamGrid | None,
              inner_cv: str, seed: int, single_thread: bool, keep_model: bool = False) -> dict[str, tuple]:
    """Fit every model on one fold.

    Returns ``{name: (test predictions, attention or None, seconds, tuned params, kept)}``
    where ``kept`` is None, or for the MIL with ``keep_model``: ``{"model": the fitted
    estimator, "hidden": {group: test predictions with that modality group hidden}}``
    (what CV+ intervals need, :mod:`anomaly.crs.conformal`).
    """
    if single_thread:
        # Parallel folds share the cores; intra-op threads on top would oversubscribe them.
        import torch

        torch.set_num_threads(1)
    out = {}
    for name, factory in models.items():
        t0 = time.perf_counter()
        params = None
        if name == "mil" and param_grid:
            params = tune_params(bags.subset(train), y[train], factory, param_grid,
                                 y_sd=None if sd is None else sd[train], cv=inner_cv, seed=seed)
        est, pred = _fit_predict(factory, bags, y, sd, train, test, params)
        att = est.attention(bags.subset(test)) if name == "mil" and hasattr(est, "attention") else None
        kept = None
        if name == "mil" and keep_model:
            held_out = bags.subset(test)
            kept = {"model": est, "hidden": {g: est.predict(hide_groups(held_out, [g]))
                                             for g in modality_groups(bags)}}
        out[name] = (pred, att, time.perf_counter() - t0, params, kept)
    return out


@dataclass
class CVResult:
    """Outcome of :func:`cross_validate`.

    Attributes
    ----------
    predictions : DataFrame
        participant_id, crs, crs_pred_mil, crs_pred_ridge, crs_pred_mean (mean over
        repeats for repeated K-fold), crs_pred_mil_sd (spread over repeats, 0 if one).
    metrics : DataFrame
        model, metric, estimate, ci_low, ci_high.
    conformal_quantile : float
        Radius of the (1 - alpha) conformal interval from the MIL's out-of-fold residuals.
    alpha : float
    attention : ndarray (N, R)
        Out-of-fold attention of each patient (mean over repeats).
    best_params : list of dict
        Tuned parameters of each outer fold (nested CV), empty without tuning.
    differences : DataFrame
        Paired bootstrap differences of the MIL against each baseline
        (:func:`paired_differences`; empty without baselines).
    cv_plus : CVPlusIntervals, optional
        Fold models and residuals for CV+ intervals (``keep_fold_models=True``).
    seconds : dict
        Time spent fitting and predicting each model, summed over folds (with
        ``n_jobs > 1`` folds overlap, so the CV's wall time is shorter).
    repeat_predictions : dict of str to ndarray (R, N)
        Out-of-fold predictions of each model in each repeat (``kfold:KxR``): every
        row is a complete CV of its own, so metrics can be taken per repeat.
    """

    predictions: pd.DataFrame
    metrics: pd.DataFrame
    conformal_quantile: float
    alpha: float
    attention: np.ndarray | None = None
    best_params: list[dict[str, Any]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)
    cv_plus: CVPlusIntervals | None = None
    repeat_predictions: dict[str, np.ndarray] = field(default_factory=dict)

    def metric(self, model: str, metric: str) -> float:
        """Point estimate of one metric."""
        row = self.metrics[(self.metrics.model == model) & (self.metrics.metric == metric)]
        return float(row.estimate.iloc[0])

    def table(self) -> pd.DataFrame:
        """Wide table: one row per model, ``estimate [ci_low, ci_high]`` per metric."""
        m = self.metrics
        cells = m.apply(lambda r: f"{r.estimate:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]", axis=1)
        wide = pd.DataFrame({"model": m.model, "metric": m.metric, "cell": cells})
        out = wide.pivot(index="model", columns="metric", values="cell")
        known = ("mil", *BASELINES)
        order = [k for k in known if k in out.index] + [k for k in out.index if k not in known]
        return out.loc[order, [k for k in METRICS if k in out.columns]]


def cross_validate(bags: RegionBags | np.ndarray, y: Sequence[float], estimator: Any = None, *,
                   y_sd: Sequence[float] | None = None, cv: str | int = "loo", seed: int = 0, mcs_cut: float = 8,
                   alpha: float = 0.1, n_bootstrap: int = 1000, baselines: bool = True,
                   param_grid: ParamGrid | None = None, inner_cv: str = "kfold:5",
                   n_jobs: int = 1, progress: bool = True, keep_fold_models: bool = False) -> CVResult:
    """Out-of-fold predictions and metrics of the MIL regressor and the baselines.

    Parameters
    ----------
    bags : RegionBags or array (N, R, F)
    y : array-like (N,)
        CRS-R labels.
    estimator : MILRegressor, dict of MILRegressor params, factory or None
        Cloned (or called) afresh for every fold. Default: ``MILRegressor()``.
    y_sd : array-like (N,), optional
        Per-patient label SDs, passed to ``fit``.
    cv : {"loo", "kfold:K", "kfold:KxR"} or int, default="loo"
    seed : int, default=0
        Fold shuffling and bootstrap draws.
    mcs_cut : float, default=8
    alpha : float, default=0.1
        Miscoverage of the conformal interval (0.1 -> 90%).
    n_bootstrap : int, default=1000
    baselines : bool, default=True
        Also cross-validate the training-fold mean, ridge regression and the
        arousal x awareness model (:data:`BASELINES`), and compare the MIL with each
        by paired bootstrap differences.
    param_grid : mapping or sequence of mappings, optional
        MIL hyperparameters to tune: a grid, or a list of candidate parameter sets
        (e.g. ``[{"loss": "mae"}, {"loss": "mse"}]``: the choice of loss is then
        validated, not made on the test patients). The choice is made inside each
        outer training fold with ``inner_cv`` (nested CV), so the outer estimate stays
        unbiased; :attr:`CVResult.best_params` lists the choices.
    inner_cv : str, default="kfold:5"
    n_jobs : int, default=1
        Folds fitted in parallel worker processes (-1: one per core). Results do not
        depend on it: every fold's estimator is seeded.
    progress : bool, default=True
        tqdm progress bar on stderr.
    keep_fold_models : bool, default=False
        Keep the MIL of every fold of the first repeat, with residuals per missing
        modality, as :attr:`CVResult.cv_plus` (CV+ intervals for new patients).

    Returns
    -------
    CVResult
    """
    bags, y, sd = _cv_inputs(bags, y, y_sd, n_jobs)
    splits = make_splits(len(y), cv, seed=seed)
    models = _cv_models(estimator, baselines)
    jobs = [(rep, train, test) for rep, folds in enumerate(splits) for train, test in folds]
    run = partial(_run_fold, models, bags, y, sd, param_grid=param_grid, inner_cv=inner_cv, seed=seed,
                  single_thread=n_jobs != 1, keep_model=keep_fold_models)
    folds = _out_of_fold(jobs, run, models, len(splits), len(y), n_jobs=n_jobs, desc=f"CV ({cv})", progress=progress)
    preds = folds["preds"]
    metrics = bootstrap_metrics(y, preds, n_bootstrap=n_bootstrap, seed=seed, mcs_cut=mcs_cut)
    differences = (paired_differences(y, preds, n_bootstrap=n_bootstrap, seed=seed, mcs_cut=mcs_cut)
                   if baselines else pd.DataFrame())
    # Every repeat's residuals are genuine out-of-fold residuals of a single model (like
    # the final one); pooling them (rather than averaging predictions) keeps that.
    q = conformal_quantile((preds["mil"] - y[None]).ravel(), alpha)
    table = pd.DataFrame({"participant_id": bags.participant_ids, "crs": y,
                          **{f"crs_pred_{name}": preds[name].mean(0) for name in models},
                          "crs_pred_mil_sd": preds["mil"].std(0)})
    att = folds["attention"]
    return CVResult(predictions=table, metrics=metrics, conformal_quantile=q, alpha=alpha,
                    attention=None if att is None else att.mean(0), best_params=folds["best_params"],
                    seconds=folds["seconds"], differences=differences, repeat_predictions=preds,
                    cv_plus=_cv_plus(folds["kept"], y, preds["mil"][0], alpha) if keep_fold_models else None)


def _cv_plus(kept: Sequence[tuple[np.ndarray, dict]], y: np.ndarray, pred: np.ndarray,
             alpha: float) -> CVPlusIntervals:
    """CV+ intervals from the first repeat's fold models and out-of-fold residuals."""
    fold_of = np.full(len(y), -1)
    residuals = {OBSERVED: np.abs(y - pred)}
    for k, (test, fold) in enumerate(kept):
        fold_of[test] = k
        for group, hidden in fold["hidden"].items():
            residuals.setdefault(group, np.full(len(y), np.nan))[test] = np.abs(y[test] - hidden)
    return CVPlusIntervals(fold_models=[fold["model"] for _, fold in kept], fold_of=fold_of,
                           residuals=residuals, alpha=alpha)


def _cv_models(estimator: Any, baselines: bool) -> dict[str, Callable[[], Any]]:
    """Name -> factory of every model :func:`cross_validate` fits in each fold."""
    models: dict[str, Callable[[], Any]] = {"mil": _make_estimator(estimator)}
    if baselines:
        models.update({"ridge": RidgeBaseline, "hypothesis": HypothesisBaseline, "mean": MeanBaseline})
    return models


def _cv_inputs(bags: RegionBags | np.ndarray, y: Sequence[float], y_sd: Sequence[float] | None,
               n_jobs: Any) -> tuple[RegionBags, np.ndarray, np.ndarray | None]:
    """Checked bags, labels and label SDs of :func:`cross_validate`."""
    bags = as_region_bags(bags)
    y = np.asarray(y, dtype=float).reshape(-1)
    if y.size != len(bags):
        raise ValueError(f"y has {y.size} values but there are {len(bags)} bags")
    sd = None if y_sd is None else np.asarray(y_sd, dtype=float).reshape(-1)
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, (int, np.integer)) or n_jobs == 0:
        raise ValueError(f"n_jobs must be a non-zero integer, got {n_jobs!r}")
    return bags, y, sd


def _out_of_fold(jobs: list[tuple[int, np.ndarray, np.ndarray]], run: Callable[..., dict[str, tuple]],
                 models: Mapping[str, Any], n_rep: int, n: int, *, n_jobs: int, desc: str,
                 progress: bool) -> dict[str, Any]:
    """Run every (repeat, train, test) fold and gather its out-of-fold outputs.

    Returns
    -------
    dict
        ``preds`` (model -> (n_rep, N)), ``attention`` ((n_rep, N, R) or None),
        ``best_params`` (list), ``seconds`` (model -> float) and ``kept`` (the first
        repeat's (test indices, kept MIL) pairs, see :func:`_run_fold`).
    """
    from tqdm.auto import tqdm

    preds = {k: np.full((n_rep, n), np.nan) for k in models}
    kept: list[tuple[np.ndarray, dict]] = []
    attention = None
    best_params: list[dict[str, Any]] = []
    seconds = {k: 0.0 for k in models}
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, file=sys.stderr, leave=False)
    if n_jobs == 1:
        results = (run(train, test) for _, train, test in jobs)
    else:
        # Folds are independent: a pool of worker processes (loky) fits them; results
        # come back in submission order.
        from joblib import Parallel, delayed

        results = Parallel(n_jobs=n_jobs, return_as="generator")(delayed(run)(train, test) for _, train, test in jobs)
    for (rep, train, test), fold in zip(jobs, results):
        for name, (pred, att, fold_seconds, params, fold_kept) in fold.items():
            preds[name][rep, test] = pred
            if fold_kept is not None and rep == 0:
                kept.append((test, fold_kept))
            seconds[name] += fold_seconds
            if params is not None:
                best_params.append(params)
            if att is not None:
                if attention is None:
                    attention = np.zeros((n_rep,) + (n, att.shape[1]))
                attention[rep, test] = att
        bar.update(1)
    bar.close()
    return {"preds": preds, "attention": attention, "best_params": best_params, "seconds": seconds, "kept": kept}
