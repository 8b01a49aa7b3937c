"""Curricula: pacing, orders, the random control."""

import numpy as np
import pytest

from anomaly.crs import MILRegressor, curriculum_masks, curriculum_order, pacing_sizes
from anomaly.crs.curriculum import confidence_difficulty


def test_pacing_grows_linearly_to_full_set():
    sizes = pacing_sizes(50, 100, start=0.4)
    assert sizes[0] == 20
    assert (np.diff(sizes) >= 0).all()
    assert sizes[50] == 50 and (sizes[50:] == 50).all()
    assert sizes[25] == pytest.approx(35, abs=1)
    with pytest.raises(ValueError):
        pacing_sizes(10, 10, start=0.0)


def test_random_control_has_same_sizes(rng):
    y = rng.integers(0, 24, 30).astype(float)
    sizes = pacing_sizes(30, 40)
    masks = {kind: curriculum_masks(curriculum_order(kind, y=y, sample_loss=rng.random(30), rng=np.random.default_rng(1)), sizes)
             for kind in ("confidence", "self-paced", "random")}
    for kind, m in masks.items():
        assert m.shape == (40, 30)
        assert np.array_equal(m.sum(1), sizes), kind
        # Nested: a bag once in stays in.
        assert (m[1:] >= m[:-1]).all()
    assert not np.array_equal(masks["random"], masks["confidence"])


def test_confidence_order():
    y = np.array([0, 7, 8, 23, 15, 3], dtype=float)
    order = curriculum_order("confidence", y=y, cut=8)
    # Far from the 7.5 boundary first; 7 and 8 last.
    assert set(order[-2:]) == {1, 2}
    assert order[0] == 3
    sd = np.array([2.0, 0.5, 0.5, 2.0, 1.0, np.nan])
    order = curriculum_order("confidence", y=y, y_sd=sd, cut=8)
    assert set(order[:2]) == {1, 2}  # the precisely rated first, whatever their label
    d = confidence_difficulty(y, sd)
    assert d[1] < d[4] < d[0]


def test_self_paced_needs_losses_and_orders_by_them():
    y = np.zeros(4)
    assert list(curriculum_order("self-paced", y=y, sample_loss=np.array([3.0, 1.0, 2.0, 0.0]))) == [3, 1, 2, 0]
    with pytest.raises(ValueError):
        curriculum_order("self-paced", y=y)
    with pytest.raises(ValueError):
        curriculum_order("other", y=y)


@pytest.mark.parametrize("kind", ["confidence", "self-paced", "random"])
def test_estimator_curricula(rng, kind):
    X = rng.normal(size=(20, 3, 2)).astype(np.float32)
    y = np.clip(np.rint(11 + 5 * X[:, 0, 0]), 0, 23)
    m = MILRegressor(curriculum=kind, epochs=20, n_seeds=1).fit(X, y, y_sd=np.full(20, 1.5))
    assert m.curriculum_sizes_[0] == 8 and m.curriculum_sizes_[-1] == 20
    assert np.isfinite(m.predict(X)).all()
