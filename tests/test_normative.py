"""Normative models: calibration maths, the autoencoder recipe, detection, model files."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from anomaly.io import AnomalyModelError, find_subjects
from anomaly.normative import NormativeModel, combine_anomaly
from anomaly.normative.calibration import VoxelwiseLinearModel
from anomaly.normative.network import coarse_noise, drop_modalities
from anomaly.preprocess import resample_to_grid

from conftest import AE_TEST_SETTINGS


# ----------------------------------------------------------------------------- units
def test_calibration_recovers_age_effect_and_sd(rng):
    shape = (1, 5, 6, 4)
    mask = np.ones(shape[1:], bool)
    model = VoxelwiseLinearModel(shape, mask, covariates=True, age_ref=50.0)
    slope_per_decade, noise_sd = 0.5, 0.3
    for _ in range(400):
        age = rng.uniform(20, 80)
        sex = "M" if rng.random() < 0.5 else "F"
        residual = 1.0 + slope_per_decade * (age - 50) / 10 + (0.2 if sex == "M" else 0.0) \
            + rng.normal(0, noise_sd, shape)
        model.add(residual.astype(np.float32), np.array([True]), age, sex)
    cal = model.finalise(smooth_sigma=0)
    np.testing.assert_allclose(cal.beta[0, 0], 1.0, atol=0.08)
    np.testing.assert_allclose(cal.beta[1, 0], slope_per_decade, atol=0.05)
    np.testing.assert_allclose(cal.beta[2, 0], 0.2, atol=0.08)
    np.testing.assert_allclose(cal.sd[0], noise_sd, rtol=0.15)
    # A subject exactly at its expected value has z = 0.
    expected = cal.predict(70.0, "M")
    assert np.abs(cal.zmap(expected, 70.0, "M")).max() < 1e-5


def test_calibration_needs_more_subjects_than_parameters():
    model = VoxelwiseLinearModel((1, 2, 2, 2), np.ones((2, 2, 2), bool), covariates=True)
    for age in (30, 40, 50):
        model.add(np.zeros((1, 2, 2, 2), np.float32), np.array([True]), age, "F")
    with pytest.raises(ValueError, match="more than 3 subjects"):
        model.finalise()


def test_combine_anomaly_uses_lesion_direction():
    z = np.zeros((3, 2, 2, 2), np.float32)
    z[0, 0, 0, 0] = -4.0   # T1w hypointense: counts
    z[0, 1, 1, 1] = 4.0    # T1w hyperintense: does not
    z[1, 0, 0, 0] = 2.0    # FLAIR hyperintense: counts
    z[2, 0, 0, 0] = -3.0   # PET hypometabolism: counts
    mask = np.ones((2, 2, 2), bool)
    a = combine_anomaly(z, np.array([True, True, True]), ["T1w", "FLAIR", "pet"], mask)
    assert a[0, 0, 0] == pytest.approx((4 + 2 + 3) / 3)
    assert a[1, 1, 1] == 0.0
    # A missing modality is left out of the mean rather than counted as normal.
    a2 = combine_anomaly(z, np.array([True, True, False]), ["T1w", "FLAIR", "pet"], mask)
    assert a2[0, 0, 0] == pytest.approx(3.0)
    assert (a >= 0).all()


def test_coarse_noise_is_smooth_deterministic_and_masked():
    mask = torch.zeros(24, 32, 16)
    mask[4:20, 4:28, 2:14] = 1
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    n1 = coarse_noise((2, 3, 24, 32, 16), scale=0.3, coarseness=8, generator=g1, mask=mask)
    n2 = coarse_noise((2, 3, 24, 32, 16), scale=0.3, coarseness=8, generator=g2, mask=mask)
    assert torch.equal(n1, n2)
    assert n1.shape == (2, 3, 24, 32, 16)
    assert float(n1[..., mask == 0].abs().max()) == 0.0
    inside = n1[0, 0, 4:20, 4:28, 2:14]
    # Neighbouring voxels are strongly correlated: the noise is low-frequency.
    a, b = inside[:-1].flatten(), inside[1:].flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.8


def test_drop_modalities_keeps_one_present():
    present = torch.tensor([[True, True, True], [True, False, False]] * 50)
    kept = drop_modalities(present, probability=0.9, generator=torch.Generator().manual_seed(0))
    assert kept.any(dim=1).all()
    assert not (kept & ~present).any()
    assert kept.sum() < present.sum()


# ------------------------------------------------------------------- detection
def _lesion_auroc(model_dir: Path, sim_cohort: Path) -> float:
    """Voxel AUROC of the anomaly map for the simulated focal lesions of all patients.

    Voxels changed only by global hypometabolism (in the all-change mask but not in the
    focal mask) are left out: they are neither lesion nor normal tissue.
    """
    model = NormativeModel.load(model_dir)
    truth = sim_cohort / "derivatives" / "simulation"
    scores, labels = [], []
    for subject in find_subjects(sim_cohort, group="patient"):
        score = model.score(subject.images, age=subject.age, sex=subject.sex)
        prefix = truth / f"sub-{subject.label}" / f"sub-{subject.label}_desc-"
        focal = resample_to_grid(f"{prefix}focal_mask.nii.gz", model.grid_, interpolation="nearest") > 0.5
        changed = resample_to_grid(f"{prefix}lesion_mask.nii.gz", model.grid_, interpolation="nearest") > 0.5
        evaluated = model.mask_ & ~(changed & ~focal)
        scores.append(score.anomaly[evaluated])
        labels.append(focal[evaluated])
    labels = np.concatenate(labels)
    assert labels.any(), "the simulated patients have focal lesions"
    return roc_auc_score(labels, np.concatenate(scores))


def test_zscore_model_finds_simulated_lesions(zscore_model_dir, sim_cohort):
    assert _lesion_auroc(zscore_model_dir, sim_cohort) > 0.85


def test_autoencoder_finds_simulated_lesions(ae_model_dir, sim_cohort):
    assert _lesion_auroc(ae_model_dir, sim_cohort) > 0.8
    meta = json.loads((ae_model_dir / "metadata.json").read_text())
    losses = [row["train_loss"] for row in meta["history"]]
    assert len(losses) == AE_TEST_SETTINGS["epochs"]
    assert losses[-1] < losses[0]  # it learned something


def test_control_z_maps_are_calibrated(zscore_model_dir, sim_cohort):
    """z of controls is centred with unit-order spread (controls were the calibration set)."""
    model = NormativeModel.load(zscore_model_dir)
    subject = find_subjects(sim_cohort, group="control")[0]
    score = model.score(subject.images, age=subject.age, sex=subject.sex)
    z = score.z[:, model.mask_]
    assert abs(float(np.nanmean(z))) < 0.3
    assert 0.5 < float(np.nanstd(z)) < 1.5


def test_missing_modality_is_scored_as_nan(ae_model_dir, sim_cohort):
    model = NormativeModel.load(ae_model_dir)
    subject = find_subjects(sim_cohort, group="patient")[0]
    images = {m: p for m, p in subject.images.items() if m != "pet"}
    score = model.score(images)
    c = score.modalities.index("pet")
    assert not score.present[c]
    assert np.isnan(score.z[c]).all()
    assert np.isfinite(score.anomaly).all()


# ----------------------------------------------------------------- model files
def test_save_load_round_trip_gives_identical_scores(sim_cohort, tmp_path):
    subjects = find_subjects(sim_cohort)
    model = NormativeModel("zscore", resolution=4.0, device="cpu").fit(subjects, progress=False)
    patient = next(s for s in subjects if s.group == "patient")
    before = model.score(patient.images, age=patient.age, sex=patient.sex)
    model.save(tmp_path / "m")
    after = NormativeModel.load(tmp_path / "m").score(patient.images, age=patient.age, sex=patient.sex)
    np.testing.assert_array_equal(before.anomaly, after.anomaly)
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    for key in ("toolkit_version", "torch_version", "monai_version", "grid", "modalities", "files"):
        assert key in meta


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_weights_are_refused(ae_model_dir, tmp_path):
    folder = _copy_model(ae_model_dir, tmp_path / "m")
    weights = folder / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AnomalyModelError, match="SHA-256 does not match"):
        NormativeModel.load(folder)


def test_incompatible_version_is_refused(zscore_model_dir, tmp_path):
    folder = _copy_model(zscore_model_dir, tmp_path / "m")
    meta = json.loads((folder / "metadata.json").read_text())
    meta["format_version"] = 99
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(AnomalyModelError, match="format version 99"):
        NormativeModel.load(folder)


def test_pickle_payload_disguised_as_weights_is_not_executed(ae_model_dir, tmp_path):
    """A pickle that would run code is refused, even with a matching hash in metadata."""
    folder = _copy_model(ae_model_dir, tmp_path / "m")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    weights = folder / "weights.safetensors"
    weights.write_bytes(pickle.dumps(Payload()))
    from anomaly.normative.modelio import sha256

    meta = json.loads((folder / "metadata.json").read_text())
    meta["files"]["weights.safetensors"] = sha256(weights)
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(AnomalyModelError, match="weights.safetensors"):
        NormativeModel.load(folder)
    assert not marker.exists()


# ------------------------------------------------- interruption and distributed
def _fit_argv(bids: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "anomaly", "fit-normative", str(bids), "--out", str(out),
            "--resolution", "4", "--epochs", str(epochs), "--batch-size", "1", "--device", "cpu",
            "--val-fraction", "0.3", "--quiet"]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "weights.safetensors"))


def test_sigterm_leaves_checkpoint_and_resume_matches_uninterrupted(sim_cohort, tmp_path):
    epochs = 3  # interrupted during epoch 2, well before training ends
    straight = tmp_path / "straight"
    subprocess.run(_fit_argv(sim_cohort, straight, epochs), check=True, env=_env(), capture_output=True)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(_fit_argv(sim_cohort, resumed, epochs), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = resumed / "checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert checkpoint.exists() and not (resumed / "weights.safetensors").exists()

    done = subprocess.run(_fit_argv(sim_cohort, resumed, epochs) + ["--resume"], env=_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


def test_two_process_distributed_training_writes_one_model(sim_cohort, tmp_path):
    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "anomaly", "fit-normative", str(sim_cohort), "--out", str(out), "--resolution", "4",
            "--epochs", "1", "--batch-size", "1", "--device", "cpu", "--val-fraction", "0.3", "--quiet"]
    result = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    model = NormativeModel.load(out)
    assert model.history_ and len(model.history_) == 1
    log = pd.read_csv(out / "training_log.csv")
    assert list(log["epoch"]) == [1]
