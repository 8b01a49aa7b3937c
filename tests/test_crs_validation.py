"""Metrics, bootstrap, CV (incl. nested), baselines, conformal intervals, FDR."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control, spearmanr
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from anomaly.crs import (MILRegressor, RidgeBaseline, benjamini_hochberg, bootstrap_metrics, conformal_quantile,
                         cross_validate, make_splits, prediction_interval, quadratic_weighted_kappa,
                         region_correlations, regression_metrics)
from anomaly.crs.synthetic import simulate_region_bags
from anomaly.crs.validation import MeanBaseline, param_candidates


def test_qwk_matches_sklearn(rng):
    y = rng.integers(0, 24, 30)
    pred = y + rng.normal(0, 3, 30)
    rounded = np.clip(np.rint(pred), 0, 23).astype(int)
    expected = cohen_kappa_score(y, rounded, weights="quadratic")
    assert quadratic_weighted_kappa(y, pred) == pytest.approx(expected)
    # Small known case: perfect agreement is 1, full reversal is strongly negative.
    assert quadratic_weighted_kappa([0, 5, 10], [0, 5, 10]) == pytest.approx(1.0)
    assert quadratic_weighted_kappa([0, 23], [23, 0]) == pytest.approx(
        cohen_kappa_score([0, 23], [23, 0], weights="quadratic"))


def test_regression_metrics_by_hand():
    y = np.array([2.0, 6.0, 10.0, 20.0])
    p = np.array([3.0, 5.0, 13.0, 19.0])
    m = regression_metrics(y, p, mcs_cut=8)
    assert m["mae"] == pytest.approx((1 + 1 + 3 + 1) / 4)
    assert m["rmse"] == pytest.approx(np.sqrt((1 + 1 + 9 + 1) / 4))
    assert m["spearman"] == pytest.approx(spearmanr(y, p).statistic)
    assert m["auroc"] == pytest.approx(roc_auc_score(y >= 8, p)) == 1.0
    assert np.isnan(regression_metrics([1, 2, 3], [1, 2, 3])["auroc"])  # one class only


def test_bootstrap_intervals(rng):
    y = rng.integers(0, 24, 40).astype(float)
    good = y + rng.normal(0, 1, 40)
    df = bootstrap_metrics(y, {"good": good, "bad": rng.permutation(y)}, n_bootstrap=300, seed=3)
    assert set(df.model) == {"good", "bad"} and len(df) == 10
    assert (df.ci_low <= df.estimate + 1e-9).all() and (df.estimate <= df.ci_high + 1e-9).all()
    g = df[(df.model == "good") & (df.metric == "mae")].iloc[0]
    b = df[(df.model == "bad") & (df.metric == "mae")].iloc[0]
    assert g.ci_high < b.ci_low
    again = bootstrap_metrics(y, {"good": good, "bad": rng.permutation(y)}, n_bootstrap=300, seed=3)
    assert np.allclose(df[df.model == "good"].ci_low, again[again.model == "good"].ci_low)


def test_conformal_quantile_by_hand():
    r = np.arange(1, 10, dtype=float)  # n = 9; ceil(0.9 * 10) = 9 -> the largest
    assert conformal_quantile(r, 0.1) == 9.0
    assert conformal_quantile(r, 0.5) == 5.0  # ceil(0.5 * 10) = 5
    assert conformal_quantile([1.0, 2.0], 0.1) == np.inf
    lo, hi = prediction_interval([1.0, 22.0], 3.0)
    assert list(lo) == [0.0, 19.0] and list(hi) == [4.0, 23.0]


def test_conformal_coverage_on_held_out_patients():
    cohort = simulate_region_bags(60, n_regions=16, seed=1)
    est = MILRegressor(epochs=150, n_seeds=1)
    res = cross_validate(cohort.bags, cohort.crs, est, cv="kfold:5", alpha=0.1, n_bootstrap=50, baselines=False,
                         progress=False)
    residuals = np.abs(res.predictions["crs"] - res.predictions["crs_pred_mil"]).to_numpy()
    assert res.conformal_quantile == pytest.approx(conformal_quantile(residuals, 0.1))
    model = est.fit(cohort.bags, cohort.crs)
    test = simulate_region_bags(300, n_regions=16, seed=2)
    pred = model.predict(test.bags)
    # Nominal coverage 1 - alpha at two levels, from the same out-of-fold residuals; the
    # lower level must give the narrower interval and lower coverage.
    coverage = {}
    for alpha, band in ((0.1, (0.8, 0.98)), (0.4, (0.45, 0.75))):
        lo, hi = prediction_interval(pred, conformal_quantile(residuals, alpha))
        coverage[alpha] = np.mean((test.crs >= lo) & (test.crs <= hi))
        assert band[0] <= coverage[alpha] <= band[1], (alpha, coverage)
    assert coverage[0.4] < coverage[0.1] - 0.1


def test_make_splits():
    assert len(make_splits(10, "loo")[0]) == 10
    reps = make_splits(10, "kfold:5x3", seed=0)
    assert len(reps) == 3 and all(len(f) == 5 for f in reps)
    for folds in reps:  # each repeat is a partition
        assert sorted(np.concatenate([t for _, t in folds]).tolist()) == list(range(10))
    assert len(make_splits(10, 4)[0]) == 4
    for bad in ("kfold:1", "kfold:20", "split", "kfold:ax2"):
        with pytest.raises(ValueError, match="cv"):
            make_splits(10, bad)


def test_cross_validate_loo_with_baselines():
    cohort = simulate_region_bags(14, n_regions=8, seed=3)
    res = cross_validate(cohort.bags, cohort.crs, {"epochs": 20, "n_seeds": 1}, cv="loo", n_bootstrap=50,
                         progress=False)
    assert list(res.predictions.columns[:6]) == ["participant_id", "crs", "crs_pred_mil", "crs_pred_ridge",
                                                 "crs_pred_hypothesis", "crs_pred_mean"]
    assert res.predictions.crs_pred_mil.notna().all() and res.predictions.crs_pred_hypothesis.notna().all()
    assert set(res.metrics.model) == {"mil", "ridge", "hypothesis", "mean"} and len(res.metrics) == 20
    assert set(res.differences.model) == {"ridge", "hypothesis", "mean"}
    # The mean baseline predicts each patient the mean of the OTHER patients.
    y = cohort.crs
    assert np.allclose(res.predictions.crs_pred_mean, (y.sum() - y) / (len(y) - 1))
    assert res.attention.shape == (14, 8)
    table = res.table()
    assert list(table.index) == ["mil", "ridge", "hypothesis", "mean"] and "qwk" in table.columns


def test_parallel_folds_give_the_serial_results():
    cohort = simulate_region_bags(12, n_regions=6, seed=5)
    kwargs = dict(cv="kfold:3", n_bootstrap=20, progress=False)
    params = {"epochs": 15, "n_seeds": 2}
    serial = cross_validate(cohort.bags, cohort.crs, params, **kwargs)
    parallel = cross_validate(cohort.bags, cohort.crs, params, n_jobs=2, **kwargs)
    pd.testing.assert_frame_equal(serial.predictions, parallel.predictions)
    assert np.array_equal(serial.attention, parallel.attention)
    with pytest.raises(ValueError, match="n_jobs"):
        cross_validate(cohort.bags, cohort.crs, params, n_jobs=0, **kwargs)


def test_nested_tuning_records_each_outer_fold():
    cohort = simulate_region_bags(15, n_regions=6, seed=4)
    res = cross_validate(cohort.bags, cohort.crs, {"epochs": 10, "n_seeds": 1}, cv="kfold:3",
                         param_grid={"hidden": [4, 8]}, inner_cv="kfold:2", baselines=False, n_bootstrap=20,
                         progress=False)
    assert len(res.best_params) == 3 and all(p["hidden"] in (4, 8) for p in res.best_params)


class _ShiftedMean(MeanBaseline):
    """The training mean plus a fixed shift (a model whose best setting is known: shift 0)."""

    def __init__(self, shift: float = 0.0, scale: float = 1.0) -> None:
        self.shift = shift
        self.scale = scale

    def predict(self, bags):
        return self.scale * super().predict(bags) + self.shift


def test_nested_selection_among_candidate_sets_and_repeated_folds():
    cohort = simulate_region_bags(15, n_regions=4, seed=4)
    # Candidates differ in their keys, as whole configurations do; the inner CV must
    # find the unshifted one in every outer fold of every repeat.
    candidates = [{"shift": 30.0}, {"shift": 0.0, "scale": 1.0}, {"shift": -30.0, "scale": 0.5}]
    assert param_candidates({"shift": [0, 1], "scale": [2]}) == [{"shift": 0, "scale": 2}, {"shift": 1, "scale": 2}]
    res = cross_validate(cohort.bags, cohort.crs, _ShiftedMean, cv="kfold:3x2", param_grid=candidates,
                         inner_cv="kfold:3", baselines=True, n_bootstrap=20, progress=False)
    assert res.best_params == [{"shift": 0.0, "scale": 1.0}] * 6
    # Each repeat is a complete CV of its own: the selected model is the training mean there.
    assert res.repeat_predictions["mil"].shape == (2, 15)
    np.testing.assert_allclose(res.repeat_predictions["mil"], res.repeat_predictions["mean"])
    assert not np.allclose(res.repeat_predictions["mil"][0], res.repeat_predictions["mil"][1])


def test_ridge_baseline_imputes_missing(rng):
    cohort = simulate_region_bags(20, n_regions=6, seed=5)
    feats = cohort.bags.features.copy()
    feats[:, :, 0] = np.nan  # a feature never observed
    feats[:6, :, 1] = np.nan  # a feature six patients lack
    bags = cohort.bags.subset(np.arange(20))
    bags.features, bags.missing = feats, np.isnan(feats)
    model = RidgeBaseline().fit(bags, cohort.crs)
    pred = model.predict(bags)
    assert np.isfinite(pred).all()
    # Missing values are imputed with the training mean: filling them in by hand (a
    # never-observed feature with any constant) gives the same predictions.
    filled = bags.subset(np.arange(20))
    training_mean = np.nanmean(feats[:, :, 1], axis=0)
    values = feats.copy()
    values[:6, :, 1] = training_mean
    values[:, :, 0] = 3.0
    filled.features, filled.missing = values, np.zeros(values.shape, bool)
    np.testing.assert_allclose(model.predict(filled), pred, atol=1e-8)
    # ...and the missing values do matter (the test above is not vacuous).
    values[:6, :, 1] = training_mean + 2.0
    assert not np.allclose(model.predict(filled), pred, atol=1e-3)


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.20])
    # sorted: .01 .03 .04 .20 -> .04 .06 .0533 .20 -> running min from the top
    expected = np.array([0.04, 0.0533333, 0.0533333, 0.20])
    assert np.allclose(benjamini_hochberg(p), expected)
    assert np.allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"))
    q = benjamini_hochberg([0.5, np.nan, 0.01])
    assert np.isnan(q[1]) and q[2] == pytest.approx(0.02)


def test_group_fdr_on_null_data_is_at_the_nominal_rate():
    """With no association at all, BH over every (feature, region) test jointly rejects
    anything in at most about 5% of cohorts (under the global null FDR = family-wise rate)."""
    cohort = simulate_region_bags(30, n_regions=20, seed=6)
    rng = np.random.default_rng(0)
    runs, any_hit = 200, 0
    for _ in range(runs):
        df = region_correlations(cohort.bags, rng.permutation(cohort.crs), features=("pet_z_mean", "anomaly_mean"))
        # q is computed over both features together, not per feature.
        assert np.allclose(df.q, benjamini_hochberg(df.p.to_numpy()), equal_nan=True)
        any_hit += bool(df.significant.any())
    # Binomial(200, 0.05): SD 1.5%. Measured 0.02: the two features are positively
    # dependent, which makes BH conservative; per-feature BH would double the rate.
    assert 0.01 <= any_hit / runs <= 0.1, any_hit / runs


def test_region_correlations_find_the_signal():
    cohort = simulate_region_bags(40, n_regions=20, seed=6)
    df = region_correlations(cohort.bags, cohort.crs, features=("pet_z_mean", "anomaly_mean", "absent"))
    assert set(df.feature) == {"pet_z_mean", "anomaly_mean"}
    pet = df[df.feature == "pet_z_mean"].set_index("name")
    causal = [n for n, c in zip(cohort.bags.region_names, cohort.causal) if c]
    assert pet.loc[causal, "rho"].mean() > 0.6
    assert pet.loc[causal, "significant"].all()
    assert list(df.columns) == ["index", "name", "feature", "n", "rho", "p", "q", "significant"]
