"""CV+ intervals: the bounds, their coverage, missing modalities, and the model folder."""

import math

import numpy as np
import pytest

from anomaly.crs import MILRegressor, RidgeBaseline, cross_validate, load_crs_model, save_crs_model
from anomaly.crs.conformal import CVPlusIntervals, cv_plus_bounds, hide_groups, missing_groups, modality_groups
from anomaly.crs.synthetic import simulate_region_bags


def test_bounds_are_the_documented_order_statistics():
    mu = np.array([[10.0], [11.0], [12.0], [13.0], [14.0], [15.0], [16.0], [17.0], [18.0]])
    r = np.arange(1.0, 10.0)
    low, high = cv_plus_bounds(mu, r, alpha=0.2)  # n = 9: k_lo = floor(2) = 2, k_hi = ceil(8) = 8
    assert low[0] == np.sort(mu[:, 0] - r)[1]
    assert high[0] == np.sort(mu[:, 0] + r)[7]
    low, high = cv_plus_bounds(mu[:3], r[:3], alpha=0.1)  # too few patients for 90%
    assert math.isinf(low[0]) and math.isinf(high[0])
    with pytest.raises(ValueError, match="alpha"):
        cv_plus_bounds(mu, r, alpha=1.5)


def _ridge_cv_plus(train, n_folds: int, alpha: float) -> CVPlusIntervals:
    """CV+ of the ridge baseline, built by hand as cross_validate does for the MIL."""
    y = train.crs.astype(float)
    folds = np.arange(len(y)) % n_folds
    models, residuals = [], np.zeros(len(y))
    for k in range(n_folds):
        model = RidgeBaseline().fit(train.bags.subset(folds != k), y[folds != k])
        residuals[folds == k] = np.abs(y[folds == k] - model.predict(train.bags.subset(folds == k)))
        models.append(model)
    return CVPlusIntervals(fold_models=models, fold_of=folds, residuals={"": residuals}, alpha=alpha)


def test_coverage_on_new_patients_is_nominal_within_binomial_error():
    # 90% intervals from 60 patients, judged on 1200 new patients of the same cohort
    # model (four training cohorts): coverage >= 1 - alpha up to binomial error, and not
    # the trivial full-scale interval.
    covered, widths = [], []
    for seed in range(4):
        cv_plus = _ridge_cv_plus(simulate_region_bags(60, seed=seed), n_folds=10, alpha=0.1)
        test = simulate_region_bags(300, seed=100 + seed)
        low, high = cv_plus.interval(test.bags)
        covered.append((test.crs >= low) & (test.crs <= high))
        widths.append(high - low)
    coverage = np.concatenate(covered).mean()
    se = math.sqrt(0.9 * 0.1 / 1200)
    assert coverage >= 0.9 - 3 * se
    assert coverage <= 0.995 and np.concatenate(widths).mean() < 18


def test_hidden_groups_and_missing_patterns():
    cohort = simulate_region_bags(8, seed=3)
    assert set(modality_groups(cohort.bags)) == {"T1w", "FLAIR", "pet"}
    hidden = hide_groups(cohort.bags, ["pet"])
    pet_columns = [j for j, n in enumerate(hidden.feature_names) if n.startswith("pet_")]
    assert np.isnan(hidden.features[:, :, pet_columns]).all() and np.isnan(hidden.global_features).all()
    assert np.isfinite(cohort.bags.features[:, :, pet_columns]).any()  # the input is untouched
    assert all("pet" in p for p in missing_groups(hidden, ["T1w", "FLAIR", "pet"]))


@pytest.fixture(scope="module")
def mil_cv_plus():
    train = simulate_region_bags(40, seed=5, missing={"pet": 0.0, "FLAIR": 0.0, "T1w": 0.0})
    res = cross_validate(train.bags, train.crs, {"epochs": 60, "n_seeds": 1}, cv="kfold:5", n_bootstrap=20,
                         baselines=False, progress=False, keep_fold_models=True)
    return train, res


def test_a_patient_without_pet_gets_a_finite_estimate_and_a_wider_interval(mil_cv_plus):
    train, res = mil_cv_plus
    cv_plus = res.cv_plus
    assert len(cv_plus.fold_models) == 5 and sorted(set(cv_plus.fold_of)) == list(range(5))
    # PET carries this cohort's CRS-R: predicted without it, the fold models err more.
    assert np.mean(cv_plus.residuals["pet"]) > np.mean(cv_plus.residuals[""])
    test = simulate_region_bags(30, seed=50, missing={"pet": 0.0, "FLAIR": 0.0, "T1w": 0.0})
    low, high = cv_plus.interval(test.bags)
    no_pet = hide_groups(test.bags, ["pet"])
    low_np, high_np = cv_plus.interval(no_pet)
    assert np.all(np.isfinite(cv_plus.fold_models[0].predict(no_pet)))
    assert np.mean(high_np - low_np) > np.mean(high - low)


def test_cv_plus_survives_the_model_folder(mil_cv_plus, tmp_path):
    train, res = mil_cv_plus
    final = MILRegressor(epochs=60, n_seeds=1).fit(train.bags, train.crs)
    folder = save_crs_model(final, tmp_path / "crs", conformal_quantile=res.conformal_quantile, alpha=0.1,
                            cv_plus=res.cv_plus)
    loaded = load_crs_model(folder)
    test = simulate_region_bags(10, seed=9)
    expected = res.cv_plus.interval(test.bags)
    got = loaded.cv_plus.interval(test.bags)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    pred, low, high = loaded.predict_interval(test.bags)
    assert np.all((low <= pred) & (pred <= high))
