"""Cross-fitted calibration of the autoencoder (``cross_fit`` K >= 2, issue 12)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from conftest import AE_TEST_SETTINGS

from anomaly.cli import main
from anomaly.io import AnomalyInputError, AnomalyModelError, find_subjects
from anomaly.normative import NormativeModel
from anomaly.normative.controls import split_controls
from anomaly.normative.crossfit import ensemble_z, split_weights, stack_weights
from anomaly.normative.recalibrate import recalibrate
from anomaly.normative.trainer import TrainingInterrupted

#: Controls the cross-fitted test model trains on; the other 3 of the cohort are unseen.
N_FIT = 7


@pytest.fixture(scope="module")
def crossfit_model(sim_cohort, tmp_path_factory):
    """A K = 2 model fitted on 7 of the 10 simulated controls, saved, and the 3 unseen ones."""
    controls = find_subjects(sim_cohort, group="control")
    folder = tmp_path_factory.mktemp("crossfit") / "model"
    model = NormativeModel("ae", cross_fit=2, **AE_TEST_SETTINGS)
    model.fit(controls[:N_FIT], workdir=folder, progress=False)
    model.save(folder)
    return model, folder, controls[N_FIT:]


def test_folds_cover_every_control_once_and_bad_k_is_refused():
    split = split_controls(9, 0.2, method="ae", seed=3, cross_fit=3)
    assert sorted(np.concatenate(split.folds)) == list(range(9)) and [len(f) for f in split.folds] == [3, 3, 3]
    assert sorted(split.calibration) == list(range(9))  # every control calibrates
    for k in range(3):  # network k never trains on its fold
        assert not set(split.fold_train(k)) & set(split.folds[k]) and len(split.fold_train(k)) == 6
    assert split_controls(9, 0.2, method="ae", seed=3).folds == ()  # K = 1: the single split
    with pytest.raises(AnomalyInputError, match="at most 4 folds"):
        split_controls(9, 0.2, method="ae", seed=3, cross_fit=5)
    with pytest.raises(AnomalyInputError, match="cross_fit"):
        NormativeModel("ae", cross_fit=0)._check_params()


def test_each_control_is_calibrated_by_the_network_that_did_not_see_it(crossfit_model):
    model, folder, _ = crossfit_model
    meta = json.loads((folder / "metadata.json").read_text())
    labels = [label for fold in meta["data"]["cross_fit_folds"] for label in fold]
    assert meta["training"]["cross_fit"] == 2 and len(model.networks_) == 2
    assert sorted(labels) == sorted(meta["data"]["calibration_labels"]) and len(labels) == N_FIT
    assert model.calibration_.n_subjects.tolist() == [N_FIT] * len(model.modalities_)  # all, not 3
    assert {row["network"] for row in model.history_} == {1, 2}
    assert len(model.history_) == 2 * AE_TEST_SETTINGS["epochs"]
    # Two networks, seeded and trained apart.
    a, b = (next(net.parameters()) for net in model.networks_)
    assert not torch.equal(a, b)
    assert model.self_check_["n_subjects"] >= 2 and model.self_check_["methods"]["ae"]["auroc"] > 0.6


def test_unseen_healthy_controls_get_ae_z_maps_of_sd_near_one(crossfit_model):
    """The calibrated ensemble z of controls no network saw spreads like a standard normal.

    Measured: mean SD 0.90 (0.64-1.09 per channel) with K = 2; the single split, whose
    calibration rests on 3 controls here, gave 1.42.
    """
    model, _, unseen = crossfit_model
    sds = []
    for subject in unseen:
        z = model.component_z(*_standardised(model, subject), subject.age, subject.sex, methods=("ae",))["ae"]
        sds += [float(np.std(z[c][model.mask_])) for c in range(z.shape[0])]
    assert 0.8 < np.mean(sds) < 1.15, sds
    assert 0.5 < min(sds) and max(sds) < 1.4, sds


def test_ensemble_z_keeps_the_networks_spread_and_the_voxel_order(rng):
    mask = np.ones((6, 6, 6), bool)
    shared = rng.standard_normal((1, 6, 6, 6))
    z = [(shared + rng.standard_normal((1, 6, 6, 6))) / np.sqrt(2) for _ in range(2)]
    out = ensemble_z(z, mask)
    assert np.std(out) == pytest.approx(np.sqrt(np.mean([np.var(m) for m in z])), rel=1e-5)
    assert np.std(0.5 * (z[0] + z[1])) < 0.9 * np.std(out)  # the plain mean would shrink to ~0.87
    np.testing.assert_array_equal(np.argsort(out.ravel()), np.argsort((z[0] + z[1]).ravel()))


def test_saved_folder_loads_all_networks_and_scores_the_same(crossfit_model, sim_cohort):
    model, folder, _ = crossfit_model
    loaded = NormativeModel.load(folder)
    assert loaded.cross_fit == 2 and len(loaded.networks_) == 2
    patient = find_subjects(sim_cohort, group="patient")[0]
    np.testing.assert_allclose(loaded.transform(patient.images).anomaly, model.transform(patient.images).anomaly,
                               rtol=0, atol=1e-5)
    states = [net.state_dict() for net in model.networks_]
    assert split_weights(stack_weights(states), 2)[1].keys() == states[1].keys()
    with pytest.raises(KeyError):
        split_weights(stack_weights(states), 3)  # metadata says 3 networks, the file holds 2


def test_weights_of_fewer_networks_than_recorded_are_refused(crossfit_model, tmp_path):
    import shutil

    _, folder, _ = crossfit_model
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta["training"]["cross_fit"] = 3
    (copy / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(AnomalyModelError, match="network"):
        NormativeModel.load(copy)


def test_recalibration_uses_every_network_and_keeps_the_weights(crossfit_model):
    model, _, unseen = crossfit_model
    new = recalibrate(model, unseen)
    assert new.networks_ is model.networks_  # shared, unchanged
    assert not np.allclose(new.calibration_.sd, model.calibration_.sd)
    assert new.calibration_.n_subjects.tolist() == [N_FIT + len(unseen)] * len(model.modalities_)


def test_resume_of_an_interrupted_second_network_ends_with_the_same_weights(sim_cohort, tmp_path):
    settings = dict(AE_TEST_SETTINGS, epochs=4, channels=(4, 8, 8, 8), cross_fit=2)
    controls = find_subjects(sim_cohort, group="control")[:6]
    straight = NormativeModel("ae", **settings).fit(controls, workdir=tmp_path / "a", progress=False)
    work = tmp_path / "b"
    checkpoint = work / "checkpoint-network2.pt"

    def interrupt_network_2():  # SIGTERM once network 2 has saved its first epoch
        deadline = time.time() + 300
        while not checkpoint.exists() and time.time() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a late signal must not end pytest
    try:
        watcher = threading.Thread(target=interrupt_network_2, daemon=True)
        watcher.start()
        with pytest.raises(TrainingInterrupted, match="checkpoint-network2"):
            NormativeModel("ae", **settings).fit(controls, workdir=work, progress=False)
        watcher.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    resumed = NormativeModel("ae", **settings).fit(controls, workdir=work, resume=True, progress=False)
    for a, b in zip(straight.networks_, resumed.networks_, strict=True):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


def test_fit_normative_cross_fit_option_writes_k_networks(sim_cohort, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(["fit-normative", str(sim_cohort), "--out", str(out), "--resolution", "4", "--epochs", "1",
                 "--batch-size", "1", "--device", "cpu", "--cross-fit", "2", "--method", "ae", "--quiet"])
    assert code == 0
    assert not list(out.glob("checkpoint*.pt"))  # every network's checkpoint is cleaned up
    assert NormativeModel.load(out).cross_fit == 2 and len(NormativeModel.load(out).networks_) == 2
    assert main(["fit-normative", str(sim_cohort), "--out", str(tmp_path / "x"), "--cross-fit", "9",
                 "--resolution", "4", "--epochs", "1", "--device", "cpu", "--quiet"]) == 2
    assert "at most 5 folds" in capsys.readouterr().err


def _standardised(model: NormativeModel, subject) -> tuple[np.ndarray, np.ndarray]:
    from anomaly.normative.calibration import standardise

    prep = model.preprocess(subject.images)
    return standardise(prep.data, prep.present, model.channel_mean_, model.channel_std_, model.mask_), prep.present
