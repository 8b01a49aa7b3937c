"""The CRS-R benchmark's repeated-CV summary (benchmarks/crs.py)."""

import numpy as np
import pytest

from benchmarks.crs import repeat_table, repeated_cv


def test_repeats_need_a_k_fold():
    assert repeated_cv("kfold:5", 3) == "kfold:5x3"
    assert repeated_cv("loo", 1) == "loo"
    for cv in ("loo", "kfold:5x2"):
        with pytest.raises(ValueError, match="--repeats needs --cv kfold:K"):
            repeated_cv(cv, 3)


def test_repeat_table_by_hand():
    y = np.array([0.0, 10.0, 20.0, 5.0])
    # Two repeats; the MIL is off by 1 then by 3 everywhere; the hypothesis baseline by 2,
    # ridge by 4, the mean by 6: the best baseline is the hypothesis.
    oof = {"crs_pred_mil_mae": np.stack([y + 1, y - 3]), "crs_pred_hypothesis": np.stack([y + 2, y + 2]),
           "crs_pred_ridge": np.stack([y + 4, y - 4]), "crs_pred_mean": np.stack([y + 6, y + 6])}
    table = repeat_table(oof, y, n_bootstrap=50, seed=0).set_index("model")
    mil = table.loc["mil_mae"]
    assert mil.repeats == 2 and mil.mae_mean == pytest.approx(2.0) and mil.mae_sd == pytest.approx(np.sqrt(2.0))
    assert (mil.mae_min, mil.mae_max) == (1.0, 3.0)
    assert mil.best_baseline == "hypothesis"
    # Every patient's error differs by the same amount in each repeat: no spread in the bootstrap.
    assert mil.diff_best == pytest.approx(0.0) and mil.diff_ci_low == pytest.approx(0.0)
    assert table.loc["ridge", "mae_mean"] == pytest.approx(4.0) and np.isnan(table.loc["ridge", "diff_best"])


def test_oracle_reference_is_near_zero_when_the_inputs_make_the_label(rng):
    from benchmarks.crs import oracle_mae

    inputs = rng.uniform(0, 1, size=(40, 5))
    y = np.clip(4 + 10 * inputs[:, 1] + 5 * inputs[:, 3], 0, 23)
    assert oracle_mae(inputs, y, "kfold:5", 0) < 0.2
    noisy = y + rng.normal(0, 3, size=y.shape)
    assert oracle_mae(inputs, noisy, "kfold:5", 0) > 1.5  # label noise stays in the MAE
    assert oracle_mae(None, y, "loo", 0) is None
