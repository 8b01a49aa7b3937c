"""The arousal x awareness baseline and paired bootstrap differences."""

import numpy as np
import pytest

from anomaly.crs import HypothesisBaseline, MeanBaseline, RidgeBaseline, paired_differences
from anomaly.crs.hypothesis import FAMILY_PATTERNS, family_deficits
from anomaly.crs.synthetic import simulate_region_bags


def _loo_mae(estimator, cohort) -> float:
    y = cohort.crs.astype(float)
    pred = np.empty_like(y)
    for i in range(len(y)):
        train = np.setdiff1d(np.arange(len(y)), [i])
        pred[i] = estimator().fit(cohort.bags.subset(train), y[train]).predict(cohort.bags.subset([i]))[0]
    return float(np.abs(pred - y).mean())


def test_family_deficits_average_the_named_regions():
    cohort = simulate_region_bags(6, seed=1)
    bags = cohort.bags
    X = family_deficits(bags)
    assert X.shape == (6, 5)
    j = bags.feature_names.index("anomaly_mean")
    thalami = [i for i, n in enumerate(bags.region_names) if "Thalamus" in n]
    assert len(thalami) == 2
    np.testing.assert_allclose(X[:, 1], np.nanmean(bags.features[:, thalami, j], axis=1), rtol=1e-6)
    np.testing.assert_allclose(X[:, 4], bags.global_features[:, 0], rtol=1e-6)
    assert set(FAMILY_PATTERNS) == {"brainstem", "thalamus", "posteromedial", "frontal"}


def test_hypothesis_baseline_beats_ridge_and_mean_on_a_physiological_cohort():
    # The synthetic cohort's CRS-R is driven by the four families: seven parameters
    # should get close to the label-noise floor, far below the mean baseline.
    cohort = simulate_region_bags(40, seed=11)
    floor = float(np.abs(cohort.crs_true - cohort.crs).mean())
    hyp = _loo_mae(HypothesisBaseline, cohort)
    assert hyp < 1.8 * floor
    assert hyp < _loo_mae(RidgeBaseline, cohort)
    assert hyp < 0.5 * _loo_mae(MeanBaseline, cohort)


def test_more_damage_never_raises_the_estimate(rng):
    cohort = simulate_region_bags(30, seed=2)
    model = HypothesisBaseline().fit(cohort.bags, cohort.crs)
    assert np.all(model.params_[[1, 2, 4, 5, 6]] >= 0)
    base = model.predict(cohort.bags)
    j = cohort.bags.feature_names.index("anomaly_mean")
    for _ in range(5):
        worse = cohort.bags.subset(np.arange(30))
        worse.features[:, :, j] += rng.uniform(0, 2, size=worse.features.shape[:2]).astype(np.float32)
        worse.global_features[:, 0] -= rng.uniform(0, 20, size=30).astype(np.float32)
        assert np.all(model.predict(worse) <= base + 1e-9)
    assert np.all((base >= 0) & (base <= 23))


def test_missing_inputs_fall_back_to_the_training_mean():
    cohort = simulate_region_bags(20, seed=4)
    model = HypothesisBaseline().fit(cohort.bags, cohort.crs)
    blind = cohort.bags.subset(np.arange(20))
    blind.features[:] = np.nan
    blind.global_features[:] = np.nan
    pred = model.predict(blind)
    assert np.all(np.isfinite(pred)) and np.ptp(pred) < 1e-9  # everyone gets the same, finite estimate


def test_paired_differences_match_the_metric_difference():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 24, 60).astype(float)
    good = y + rng.normal(0, 1, 60)
    bad = y + rng.normal(0, 5, 60)
    d = paired_differences(y, {"mil": good, "other": bad, "same": good}, n_bootstrap=400)
    row = d[(d.model == "other") & (d.metric == "mae")].iloc[0]
    assert row.difference == pytest.approx(np.abs(good - y).mean() - np.abs(bad - y).mean())
    assert row.ci_high < 0  # clearly better: the whole interval below 0
    same = d[(d.model == "same") & (d.metric == "mae")].iloc[0]
    assert same.difference == 0 and same.ci_low == 0 and same.ci_high == 0
    qwk = d[(d.model == "other") & (d.metric == "qwk")].iloc[0]
    assert qwk.ci_low > 0
