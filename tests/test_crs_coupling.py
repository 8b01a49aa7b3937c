"""Global coupling of the focal PET features inside the CRS-R regressor (issue 13)."""

import json

import numpy as np
import pytest

from anomaly.crs import (
    MILRegressor,
    RegionBags,
    cross_validate,
    load_crs_model,
    save_crs_model,
)
from anomaly.crs.coupling import apply_coupling, fit_coupling, global_level

FOCAL = "pet_focal_logratio_z"
N_REGIONS = 5
#: Region 0 does not follow the cortex: its z rises by 3 per unit fall of log(level).
SLOPE = -3.0


def _bags(rng, n, *, slope=SLOPE, start=0):
    """Patients whose global level spreads over 40-100%; region 0's focal z follows it."""
    level = rng.uniform(40.0, 100.0, n)
    x = np.log(level / 100.0)
    focal = rng.normal(0.0, 0.3, (n, N_REGIONS))
    focal[:, 0] += slope * x
    pet_z = 4.0 * x[:, None] + rng.normal(0.0, 0.3, (n, N_REGIONS))
    bags = RegionBags(participant_ids=[f"sub-{start + i:03d}" for i in range(n)],
                      features=np.stack([focal, pet_z], -1), missing=None,
                      region_index=np.arange(1, N_REGIONS + 1),
                      region_names=[f"region{i}" for i in range(N_REGIONS)],
                      feature_names=[FOCAL, "pet_z_mean"], global_features=level[:, None],
                      global_feature_names=["global_cortical_pet_percent"])
    y = np.clip(23.0 * level / 100.0 + rng.normal(0.0, 1.0, n), 0, 23)
    return bags, y


def _fit(bags, y, **params):
    return MILRegressor(epochs=15, n_seeds=2, **params).fit(bags, y)


def test_corrected_feature_no_longer_depends_on_the_global_level(rng):
    bags, y = _bags(rng, 40)
    model = _fit(bags, y, global_coupling=True)
    slopes = model.global_coupling_[FOCAL].slope_
    assert slopes[0] == pytest.approx(SLOPE, abs=0.4)
    assert np.all(np.abs(slopes[1:]) < 0.5)
    level = global_level(bags)
    raw = bags.feature(FOCAL)[:, 0]
    corrected = apply_coupling(bags, level, model.global_coupling_).feature(FOCAL)[:, 0]
    assert abs(np.corrcoef(raw, level)[0, 1]) > 0.9
    assert abs(np.corrcoef(corrected, level)[0, 1]) < 0.3
    # A patient at the controls' level (100%) is unchanged; the input bags are not modified.
    at_normal = apply_coupling(bags.subset([0]), np.array([100.0]), model.global_coupling_)
    np.testing.assert_allclose(at_normal.features, bags.subset([0]).features, atol=1e-6)
    assert np.array_equal(bags.feature(FOCAL)[:, 0], raw)


def test_slopes_come_from_the_training_bags_only(rng):
    train, y = _bags(rng, 30)
    model = _fit(train, y, global_coupling=True)
    slopes = model.global_coupling_[FOCAL].slope_.copy()
    one, _ = _bags(rng, 1, start=100)
    # Bags whose coupling is the opposite: refitting on them would change the slopes
    # and with them the first bag's prediction.
    others, _ = _bags(rng, 25, slope=-SLOPE, start=200)
    both = RegionBags(participant_ids=one.participant_ids + others.participant_ids,
                      features=np.concatenate([one.features, others.features]), missing=None,
                      region_index=one.region_index, region_names=one.region_names,
                      feature_names=one.feature_names,
                      global_features=np.concatenate([one.global_features, others.global_features]),
                      global_feature_names=one.global_feature_names)
    assert model.predict(both)[0] == pytest.approx(model.predict(one)[0], abs=1e-5)
    np.testing.assert_array_equal(model.global_coupling_[FOCAL].slope_, slopes)
    # The correction reaches the network: the same model without it predicts otherwise.
    plain = _fit(train, y, global_coupling=False)
    assert plain.global_coupling_ == {}
    assert not np.allclose(plain.predict(train), model.predict(train))


def test_nothing_to_couple_without_a_level_or_a_focal_feature(rng):
    bags, y = _bags(rng, 20)
    no_level = bags.select(global_features=[])
    assert fit_coupling(no_level, global_level(no_level)) == {}
    no_focal = bags.select(["pet_z_mean"])
    coupled = _fit(no_focal, y, global_coupling=True)
    assert coupled.global_coupling_ == {}
    np.testing.assert_array_equal(coupled.predict(no_focal), _fit(no_focal, y).predict(no_focal))


def test_model_folder_keeps_the_slopes_and_old_folders_load_without_them(rng, tmp_path):
    bags, y = _bags(rng, 30)
    model = _fit(bags, y, global_coupling=True)
    # CV+ fold models fit their own slopes on their own training folds; the folder keeps each.
    cv = cross_validate(bags, y, {"epochs": 15, "n_seeds": 2, "global_coupling": True}, cv="kfold:3",
                        baselines=False, n_bootstrap=20, progress=False, keep_fold_models=True)
    folds = cv.cv_plus.fold_models
    assert not np.allclose(folds[0].global_coupling_[FOCAL].slope_, folds[1].global_coupling_[FOCAL].slope_)
    folder = save_crs_model(model, tmp_path / "crs", cv_plus=cv.cv_plus)
    saved = load_crs_model(folder)
    loaded = saved.estimator
    np.testing.assert_array_equal(loaded.global_coupling_[FOCAL].slope_, model.global_coupling_[FOCAL].slope_)
    np.testing.assert_array_equal(loaded.predict(bags), model.predict(bags))
    for before, after in zip(folds, saved.cv_plus.fold_models):
        np.testing.assert_array_equal(after.global_coupling_[FOCAL].slope_, before.global_coupling_[FOCAL].slope_)
    np.testing.assert_allclose(saved.cv_plus.interval(bags), cv.cv_plus.interval(bags))
    # A folder written before the option: no parameter, no state -> no coupling.
    meta_path = folder / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["params"]["global_coupling"], meta["state"]["global_coupling_"]
    meta_path.write_text(json.dumps(meta))
    old = load_crs_model(folder).estimator
    assert old.global_coupling is False and old.global_coupling_ == {}
