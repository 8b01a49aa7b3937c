"""The signed MIL regressor: sign constraints, per-region standardisation, size, region prior."""

import numpy as np
import pytest

from anomaly.crs import MILRegressor
from anomaly.crs.features import damage_sign
from anomaly.crs.regions import DESCRIPTORS, region_descriptors
from anomaly.crs.synthetic import simulate_region_bags

FEATURES = ["anomaly_mean", "pet_z_mean", "FLAIR_z_mean", "pet_frac_z_lt_m2"]


@pytest.fixture(scope="module")
def fitted():
    cohort = simulate_region_bags(40, n_regions=24, seed=3)
    bags = cohort.bags.select(FEATURES)
    model = MILRegressor(epochs=120, n_seeds=2, seed=0).fit(bags, cohort.crs)
    return model, bags, cohort


def test_damage_directions_follow_the_modalities():
    assert damage_sign("anomaly_mean") == 1.0
    assert damage_sign("pet_z_mean") == -1.0  # hypometabolism lowers the z
    assert damage_sign("pet_focal_logratio_z") == -1.0
    assert damage_sign("FLAIR_z_p95") == 1.0  # FLAIR lesions are bright
    assert damage_sign("T1w_frac_absz_gt2") == 1.0
    assert damage_sign("global_cortical_pet_percent") == -1.0
    assert damage_sign("ADC_z_mean") == 0.0  # two-sided: a free weight
    assert damage_sign("f0") == 0.0


def test_more_damage_never_raises_the_prediction(fitted):
    model, bags, _ = fitted
    rng = np.random.default_rng(0)
    base = bags.subset(range(20))
    before = model.predict(base)
    for name in FEATURES + ["global_cortical_pet_percent"]:
        worse = base.subset(range(len(base)))
        step = damage_sign(name) * rng.uniform(0.1, 3.0, size=len(base))
        if name in FEATURES:
            f = worse.feature_names.index(name)
            regions = rng.integers(0, worse.features.shape[1], size=len(base))
            worse.features[np.arange(len(base)), regions, f] += step
        else:
            g = worse.global_feature_names.index(name)
            worse.global_features[:, g] += 20 * step
        after = model.predict(worse)
        assert np.all(after <= before + 1e-4), name
    # ... and the constraint is not vacuous: damage everywhere lowers the prediction.
    worse = base.subset(range(len(base)))
    worse.features[..., FEATURES.index("pet_z_mean")] -= 3.0
    assert model.predict(worse).mean() < before.mean() - 1.0


def test_per_region_standardisation_ignores_a_region_offset(fitted):
    model, bags, cohort = fitted
    assert model.feature_mean_.shape == (bags.features.shape[1], len(FEATURES))
    shifted = bags.subset(range(len(bags)))
    shifted.features[:, 5, :] += 7.0  # e.g. a region that reads high in every scan
    other = MILRegressor(epochs=120, n_seeds=2, seed=0).fit(shifted, cohort.crs)
    np.testing.assert_allclose(other.predict(shifted), model.predict(bags), atol=1e-3)


def test_far_fewer_parameters_than_the_gated_network(fitted):
    model, bags, cohort = fitted
    gated = MILRegressor(architecture="gated", epochs=5, n_seeds=1).fit(bags, cohort.crs)
    assert model.n_parameters() < 150
    assert model.n_parameters() * 4 < gated.n_parameters()


def test_region_prior_from_the_shipped_atlas():
    labels = simulate_region_bags(5, seed=0).bags
    desc = region_descriptors("neuromorphometrics", labels.region_index)
    assert desc.shape == (len(labels.region_index), len(DESCRIPTORS))
    stem = labels.region_names.index("Brain_Stem")
    deep = DESCRIPTORS.index("deep")
    assert desc[stem, deep] == 1.0 and abs(desc[stem, DESCRIPTORS.index("x")]) < 0.1
    precuneus = [i for i, n in enumerate(labels.region_names) if "precuneus" in n]
    assert all(desc[i, deep] == 0.0 for i in precuneus)
    assert region_descriptors("not-an-atlas", labels.region_index) is None
    assert region_descriptors("neuromorphometrics", [999999]) is None
