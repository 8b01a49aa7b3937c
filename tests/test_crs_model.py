"""MILRegressor: attention, missing modalities, estimator API."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from anomaly.crs import MILRegressor, RegionBags

FEATURES = ["anomaly_mean", "T1w_z_mean", "T1w_z_p05", "pet_z_mean", "pet_z_p05"]


def signal_bags(rng, n=40, n_regions=6, informative=3):
    """Every region is noise except ``informative``, whose pet_z_mean sets y."""
    X = rng.normal(size=(n, n_regions, len(FEATURES))).astype(np.float32)
    s = rng.uniform(-2, 2, size=n)
    X[:, informative, 3] = s
    X[:, informative, 4] = s - 1.6 + rng.normal(0, 0.1, n)
    y = np.clip(np.rint(11.5 + 5.5 * s), 0, 23)
    bags = RegionBags(participant_ids=[f"sub-{i:02d}" for i in range(n)], features=X, missing=None,
                      region_index=np.arange(10, 10 + n_regions), region_names=[f"R{i}" for i in range(n_regions)],
                      feature_names=FEATURES)
    return bags, y


def test_attention_concentrates_on_informative_region(rng):
    bags, y = signal_bags(rng)
    model = MILRegressor(epochs=120, n_seeds=3, hidden=8, seed=0).fit(bags, y)
    att = model.attention(bags)
    assert att.shape == (40, 6)
    assert np.allclose(att.sum(1), 1.0, atol=1e-5)
    mean_att = att.mean(0)
    assert int(np.argmax(mean_att)) == 3
    assert mean_att[3] > 2.0 / 6


def test_missing_values_and_modalities(rng):
    bags, y = signal_bags(rng, n=30)
    feats = bags.features.copy()
    feats[:5, :, 1:3] = np.nan  # five subjects without T1w
    feats[5, 2, :] = np.nan  # one region without any value
    bags = RegionBags(participant_ids=bags.participant_ids, features=feats, missing=None,
                      region_index=bags.region_index, region_names=bags.region_names, feature_names=FEATURES)
    model = MILRegressor(epochs=40, n_seeds=2).fit(bags, y)
    pred = model.predict(bags)
    assert np.isfinite(pred).all()
    assert np.isfinite(model.attention(bags)).all()
    # A trained model predicts for bags whose table lacks a modality entirely
    # (columns absent) and whose regions come in another order.
    keep = [0, 3, 4]
    order = np.arange(6)[::-1]
    lacking = RegionBags(participant_ids=bags.participant_ids, features=bags.features[:, order][:, :, keep],
                         missing=None, region_index=bags.region_index[order],
                         region_names=[bags.region_names[i] for i in order],
                         feature_names=[FEATURES[i] for i in keep])
    pred2 = model.predict(lacking)
    assert np.isfinite(pred2).all()
    assert np.allclose(pred2[:5], pred[:5], atol=1e-4)  # these had no T1w anyway
    # Missing flags: one per feature group (anomaly, T1w, pet).
    assert model.groups_ == ["anomaly", "T1w", "pet"]


def test_default_training_length_depends_on_the_architecture(rng):
    bags, y = signal_bags(rng, n=12)
    signed = MILRegressor(n_seeds=1).fit(bags, y)
    assert signed.loss_history_.shape == (100,)
    assert MILRegressor(architecture="gated")._n_epochs() == 300
    assert MILRegressor(epochs=7)._n_epochs() == 7
    with pytest.raises(ValueError, match="epochs"):
        MILRegressor(epochs=0).fit(bags, y)


def test_region_mismatch_is_refused(rng):
    from anomaly.io import AnomalyInputError

    bags, y = signal_bags(rng, n=12)
    model = MILRegressor(epochs=2, n_seeds=1).fit(bags, y)
    other = RegionBags(participant_ids=bags.participant_ids, features=bags.features, missing=None,
                       region_index=bags.region_index + 100, region_names=bags.region_names, feature_names=FEATURES)
    with pytest.raises(AnomalyInputError, match="regions"):
        model.predict(other)


def test_estimator_api(rng):
    bags, y = signal_bags(rng, n=16)
    model = MILRegressor(loss="coral", epochs=5, n_seeds=2, hidden=4)
    with pytest.raises(NotFittedError):
        model.predict(bags)
    assert clone(model).get_params() == model.get_params()
    assert model.fit(bags, y) is model
    assert model.n_parameters() < 5000
    p1 = model.predict(bags)
    p2 = MILRegressor(loss="coral", epochs=5, n_seeds=2, hidden=4).fit(bags, y).predict(bags)
    assert np.array_equal(p1, p2)  # seeded
    mean, sd = model.predict(bags, return_std=True)
    # The SD is the spread of the ensemble members (two seeds: half their distance), not a
    # clipped range, and the members do differ.
    members = model.predict_members(bags)
    assert np.allclose(mean, p1) and np.allclose(sd, np.abs(members[0] - members[1]) / 2)
    assert sd.max() > 0
    dist = model.predict_distribution(bags)
    assert dist.shape == (16, 24) and np.allclose(dist.sum(1), 1.0)
    with pytest.raises(ValueError, match="ordinal"):
        MILRegressor(epochs=2, n_seeds=1).fit(bags, y).predict_distribution(bags)
    # Plain arrays work as bags too.
    assert MILRegressor(epochs=2, n_seeds=1).fit(bags.features, y).predict(bags.features).shape == (16,)


@pytest.mark.parametrize("params, match", [
    ({"loss": "bogus"}, "loss"), ({"dropout": 1.5}, "dropout"), ({"curriculum": "hard"}, "curriculum"),
    ({"n_seeds": 0}, "n_seeds"), ({"batch_size": 1}, "batch_size"), ({"link": "logit"}, "link"),
])
def test_invalid_params(rng, params, match):
    bags, y = signal_bags(rng, n=8)
    with pytest.raises(ValueError, match=match):
        MILRegressor(**params).fit(bags, y)


@pytest.mark.parametrize("link", ["log", "identity"])
def test_both_links_fit_and_stay_on_the_scale(rng, link):
    bags, y = signal_bags(rng, n=40)
    model = MILRegressor(link=link, epochs=150, n_seeds=2, hidden=8, seed=0).fit(bags, y)
    pred = model.predict(bags)
    assert np.abs(pred - y).mean() < 0.3 * np.abs(y - y.mean()).mean()
    # Held-out bags of the same problem: well below the error of the training mean.
    test, y_test = signal_bags(np.random.default_rng(99), n=40)
    mae = np.abs(model.predict(test) - y_test).mean()
    assert mae < 0.5 * np.abs(y_test - y.mean()).mean()
    # Inputs far outside the training range (a corrupt table): predict() clips to 0..23,
    # so check the unclipped network output. The log link's score is clamped, so exp()
    # cannot overflow and the output stays within base * exp(_LOG_SCORE_MAX).
    from anomaly.crs.model import _LOG_SCORE_MAX

    wild = RegionBags(participant_ids=bags.participant_ids, features=bags.features * 1e4, missing=None,
                      region_index=bags.region_index, region_names=bags.region_names, feature_names=FEATURES)
    raw = model._raw_points(*model._design(wild))
    assert np.isfinite(raw).all()
    if link == "log":
        assert (raw >= 0).all() and (raw <= max(model.y_mean_, 0.5) * np.exp(_LOG_SCORE_MAX) * (1 + 1e-5)).all()


@pytest.mark.parametrize("loss", ["rank", "coral"])
def test_link_only_acts_on_an_anchored_scalar_head(rng, loss):
    # Ranking alone is calibrated after training and ordinal heads have their own
    # outputs: the link must not change them.
    bags, y = signal_bags(rng, n=16)
    log = MILRegressor(loss=loss, link="log", epochs=20, n_seeds=1).fit(bags, y).predict(bags)
    identity = MILRegressor(loss=loss, link="identity", epochs=20, n_seeds=1).fit(bags, y).predict(bags)
    assert np.array_equal(log, identity)


def test_log_link_trains_on_all_zero_labels(rng):
    bags, y = signal_bags(rng, n=10)
    pred = MILRegressor(link="log", epochs=30, n_seeds=1).fit(bags, np.zeros(10)).predict(bags)
    assert np.all(pred < 0.5)


def test_invalid_labels(rng):
    bags, y = signal_bags(rng, n=8)
    with pytest.raises(ValueError, match="0..23"):
        MILRegressor(epochs=1).fit(bags, y + 30)
    with pytest.raises(ValueError, match="bags"):
        MILRegressor(epochs=1).fit(bags, y[:-1])


def test_minibatches_and_globals(rng):
    bags, y = signal_bags(rng, n=20)
    bags.global_features = (y[:, None] / 23.0 + rng.normal(0, 0.01, (20, 1))).astype(np.float32)
    bags.global_feature_names = ["global_cortical_pet_percent"]
    model = MILRegressor(epochs=30, n_seeds=1, batch_size=8).fit(bags, y)
    assert model.global_feature_names_ == ["global_cortical_pet_percent"]
    assert np.isfinite(model.predict(bags)).all()
    # The global value is used: raising it (it tracks y) raises every prediction.
    low, high = (RegionBags(participant_ids=bags.participant_ids, features=bags.features, missing=None,
                            region_index=bags.region_index, region_names=bags.region_names,
                            feature_names=FEATURES, global_features=np.full((20, 1), v, np.float32),
                            global_feature_names=bags.global_feature_names) for v in (0.1, 0.9))
    shift = model.predict(high) - model.predict(low)
    # From 0.1 to 0.9 the label it tracks moves 18 points; measured: 10 points on average.
    assert (shift > 0).all() and shift.mean() > 5
    no_glob = RegionBags(participant_ids=bags.participant_ids, features=bags.features, missing=None,
                         region_index=bags.region_index, region_names=bags.region_names, feature_names=FEATURES)
    assert np.isfinite(model.predict(no_glob)).all()  # a missing global value is flagged, not fatal


def test_modality_dropout_hides_groups_like_missing_data(rng):
    import torch

    bags, y = signal_bags(rng, n=10)
    bags.global_features = rng.normal(size=(10, 2)).astype(np.float32)
    bags.global_feature_names = ["global_cortical_pet_percent", "mean_anomaly"]
    model = MILRegressor(epochs=2, n_seeds=1, modality_dropout=0.99).fit(bags, y)
    # Deliberately white-box: dropout acts on the private design layout (F value columns,
    # then one missing flag per group), which no public output exposes.
    x, g = model._design(bags)
    plan = model._modality_dropout_plan(torch.device("cpu"))
    torch.manual_seed(0)
    xd, gd = model._drop_modalities(torch.as_tensor(x), torch.as_tensor(g), plan)
    xd, gd = xd.numpy(), gd.numpy()
    F = len(FEATURES)
    # anomaly_* is never hidden; T1w_* and pet_* are (p = 0.99): values 0, flags 1.
    assert np.array_equal(xd[:, :, 0], x[:, :, 0])
    assert (xd[:, :, 1:F] == 0).mean() > 0.9
    assert (xd[:, :, F + 1:] == 1).mean() > 0.9 and np.array_equal(xd[:, :, F], x[:, :, F])
    # The PET-derived global value goes with PET; the other one stays.
    assert (gd[:, 0] == 0).mean() > 0.8 and (gd[:, 2] == 1).mean() > 0.8
    assert np.array_equal(gd[:, 1], g[:, 1])
    # Where nothing was hidden the design is unchanged (no clipping of negative values).
    torch.manual_seed(0)
    plan["p"] = torch.tensor(0.0)
    xs, _ = model._drop_modalities(torch.as_tensor(x), torch.as_tensor(g), plan)
    assert np.array_equal(xs.numpy(), x)
    with pytest.raises(ValueError, match="modality_dropout"):
        MILRegressor(modality_dropout=1.0).fit(bags, y)
