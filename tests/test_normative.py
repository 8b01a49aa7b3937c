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
from conftest import AE_TEST_SETTINGS
from sklearn.metrics import roc_auc_score

from anomaly.io import AnomalyInputError, AnomalyModelError, find_subjects
from anomaly.normative import NormativeModel, combine_anomaly
from anomaly.normative.calibration import VoxelwiseLinearModel
from anomaly.normative.network import coarse_noise, drop_modalities
from anomaly.simulate.truth import read_truth


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


def test_lesion_directions_come_from_the_constants():
    import anomaly.constants
    from anomaly.normative import LESION_SIGN

    assert LESION_SIGN is anomaly.constants.LESION_SIGN


def test_combine_anomaly_uses_lesion_direction():
    z = np.zeros((3, 2, 2, 2), np.float32)
    z[0, 0, 0, 0] = -4.0   # T1w hypointense: counts
    z[0, 1, 1, 1] = 4.0    # T1w hyperintense: does not
    z[1, 0, 0, 0] = 2.0    # FLAIR hyperintense: counts
    z[2, 0, 0, 0] = -3.0   # PET hypometabolism: counts
    mask = np.ones((2, 2, 2), bool)
    a = combine_anomaly(z, np.array([True, True, True]), ["T1w", "FLAIR", "pet"], mask, rule="mean")
    assert a[0, 0, 0] == pytest.approx((4 + 2 + 3) / 3)
    assert a[1, 1, 1] == 0.0
    # A missing modality is left out of the mean rather than counted as normal.
    a2 = combine_anomaly(z, np.array([True, True, False]), ["T1w", "FLAIR", "pet"], mask, rule="mean")
    assert a2[0, 0, 0] == pytest.approx(3.0)
    # The maximum over modalities; the default rule is led by PET (T1w 4 exceeds PET 3 by 1 < 2 z).
    largest = combine_anomaly(z, np.array([True, True, True]), ["T1w", "FLAIR", "pet"], mask, rule="max")
    assert largest[0, 0, 0] == pytest.approx(4.0) and largest[1, 1, 1] == 0.0
    default = combine_anomaly(z, np.array([True, True, True]), ["T1w", "FLAIR", "pet"], mask)
    assert default[0, 0, 0] == pytest.approx(3.0) and default[1, 1, 1] == 0.0
    assert (a >= 0).all()  # deliberate: non-negative anomaly maps are a DESIGN.md contract


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
def _lesion_auroc(model_dir: Path, sim_cohort: Path, *, baseline: bool = False) -> float:
    """Voxel AUROC of the anomaly map for the simulated focal lesions of all patients.

    Voxels changed only by global hypometabolism (in the all-change mask but not in the
    focal mask) are left out: they are neither lesion nor normal tissue. With
    ``baseline`` the score is the model-free one: the negated PET SUVR after the same
    preprocessing, no normative model (lesions are hypometabolic).
    """
    model = NormativeModel.load(model_dir)
    truth = sim_cohort / "derivatives" / "simulation"
    scores, labels = [], []
    for subject in find_subjects(sim_cohort, group="patient"):
        if baseline:
            anomaly = -model.preprocess(subject.images).data[model.modalities_.index("pet")]
        else:
            anomaly = model.transform(subject.images, age=subject.age, sex=subject.sex).anomaly
        truth_masks = read_truth(truth, subject.label, model.grid_, model.mask_)
        focal, evaluated = truth_masks.focal, truth_masks.focal_evaluated
        scores.append(np.nan_to_num(anomaly[evaluated]))
        labels.append(focal[evaluated])
    labels = np.concatenate(labels)
    assert labels.any(), "the simulated patients have focal lesions"
    return roc_auc_score(labels, np.concatenate(scores))


#: How much a normative model must beat the model-free baseline (voxel AUROC). On the
#: shared cohort the baseline is 0.80, the z-score model 0.91 and the test autoencoder 0.91.
DETECTION_MARGIN = 0.05


def test_zscore_model_finds_simulated_lesions(zscore_model_dir, sim_cohort):
    baseline = _lesion_auroc(zscore_model_dir, sim_cohort, baseline=True)
    assert baseline > 0.7  # the PET lesions are visible at all: the comparison means something
    assert _lesion_auroc(zscore_model_dir, sim_cohort) > baseline + DETECTION_MARGIN


def test_autoencoder_finds_simulated_lesions(ae_model_dir, sim_cohort):
    baseline = _lesion_auroc(ae_model_dir, sim_cohort, baseline=True)
    assert _lesion_auroc(ae_model_dir, sim_cohort) > baseline + DETECTION_MARGIN
    meta = json.loads((ae_model_dir / "metadata.json").read_text())
    assert meta["training"]["cross_fit"] == 2  # the default: two cross-fitted networks, one log each
    for network in (1, 2):
        losses = [row["train_loss"] for row in meta["history"] if row["network"] == network]
        assert len(losses) == AE_TEST_SETTINGS["epochs"]
        assert losses[-1] < losses[0]  # it learned something


@pytest.fixture(scope="module")
def held_out_controls(tmp_path_factory):
    """Two controls of the simulated population that no fixture model was fitted on."""
    from anomaly.simulate.cohort import simulate_cohort

    # Subjects are seeded per (seed, group, index): seed 8 gives other people than the
    # shared cohort's seed 7, drawn from the same population.
    out = simulate_cohort(tmp_path_factory.mktemp("held") / "bids", n_healthy=2, n_patients=0, seed=8,
                          resolution=4.0, missing_fraction=0.0, progress=False)
    return find_subjects(out, group="control")


def test_control_z_maps_are_calibrated(zscore_model_dir, held_out_controls):
    """z of held-out controls is centred with unit spread, per modality.

    Measured on the two held-out controls before the PET peak search: mean within 0.11
    of 0, SD 0.86..1.34 per modality and 0.97..1.09 over all modalities. With it the PET
    mean of one control is +0.31 (+0.16 without): a subject's uptake level relative to
    its cerebellum shifts its whole PET z map, and more so once the search has taken
    misregistration out of the controls' SD (over six held-out controls the PET means
    range from -1.04 to +1.22 with the search, -0.75 to +0.99 without).
    """
    model = NormativeModel.load(zscore_model_dir)
    pooled = []
    for subject in held_out_controls:
        z = model.transform(subject.images, age=subject.age, sex=subject.sex).z[:, model.mask_]
        assert np.isfinite(z).mean() > 0.95
        for channel in z:
            assert abs(float(np.nanmean(channel))) < 0.4
            assert 0.7 < float(np.nanstd(channel)) < 1.5
        pooled.append(z)
    pooled = np.concatenate(pooled, axis=1)
    assert abs(float(np.nanmean(pooled))) < 0.1
    assert 0.9 < float(np.nanstd(pooled)) < 1.15


def test_covariate_rule_missing_covariates_smoothing_and_sd_floor(zscore_model_dir, sim_cohort, monkeypatch):
    """Model-level calibration: the "auto" covariate rule, scoring without age or sex,
    residual smoothing and the SD floor, each against its documented rule."""
    import anomaly.normative.model as model_module

    auto = NormativeModel.load(zscore_model_dir)
    controls = find_subjects(sim_cohort, group="control")
    assert len(controls) == 10
    # "auto" models age and sex from COVARIATE_MIN_SUBJECTS (40) calibration subjects on
    # (zscore calibrates on all): not from 10; the threshold is the one the fit reads.
    assert not auto.covariates_ and auto.calibration_.beta.shape[0] == 1
    monkeypatch.setattr(model_module, "COVARIATE_MIN_SUBJECTS", 10)
    ten = NormativeModel("zscore", resolution=4.0, device="cpu").fit(controls, progress=False)
    nine = NormativeModel("zscore", resolution=4.0, device="cpu").fit(controls[:9], progress=False)
    assert ten.covariates_ and not nine.covariates_ and ten.calibration_.beta.shape[0] == 3
    # Unknown sex scores at the average sex effect, unknown age at the controls' median age.
    patient = find_subjects(sim_cohort, group="patient")[0]
    prep = ten.preprocess(patient.images)
    age_ref = float(np.median([c.age for c in controls]))
    z = {(a, s): ten.transform(prep, age=a, sex=s).z for a, s in
         [(None, None), (age_ref, None), (age_ref, "M"), (age_ref, "F")]}
    np.testing.assert_allclose(z[None, None], z[age_ref, None], atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(z[age_ref, None], (z[age_ref, "M"] + z[age_ref, "F"]) / 2, atol=1e-4,
                               equal_nan=True)
    assert np.nanmax(np.abs(z[age_ref, "M"] - z[age_ref, "F"])) > 1e-3  # sex does act
    # Residual smoothing (smooth_sigma, voxels) makes neighbouring z values alike.
    raw = NormativeModel("zscore", resolution=4.0, device="cpu", smooth_sigma=0).fit(controls, progress=False)

    def neighbour_correlation(model):
        zc = model.transform(prep, age=patient.age, sex=patient.sex).z[0]
        both = model.mask_[1:] & model.mask_[:-1]
        return np.corrcoef(zc[1:][both], zc[:-1][both])[0, 1]

    assert neighbour_correlation(ten) > neighbour_correlation(raw) + 0.1
    # The SD floor (5% within-brain quantile) raises the lowest ~5% of SDs to one value.
    for sd in ten.calibration_.sd:
        inside = sd[ten.mask_]
        assert 0.04 <= np.mean(inside == inside.min()) <= 0.07


def test_pet_reference_brainstem_normalises_to_the_brainstem(zscore_model_dir, sim_cohort, tmp_path):
    from anomaly.atlas import DEFAULT_ATLAS, Atlas

    subjects = find_subjects(sim_cohort)
    model = NormativeModel("zscore", resolution=4.0, device="cpu", pet_reference="brainstem").fit(
        subjects, progress=False)
    cerebellum = NormativeModel.load(zscore_model_dir)
    with pytest.warns(UserWarning, match="no voxel left"):  # tiny labels lost at 4 mm
        atlas = Atlas.load(DEFAULT_ATLAS).resample_to(model.grid_)
    patient = next(s for s in subjects if s.group == "patient")
    c = model.modalities_.index("pet")
    for reference, fitted in (("Brain_Stem", model), ("Cerebell", cerebellum)):
        pet = fitted.preprocess(patient.images).data[c]
        for region in ("Brain_Stem", "Cerebell"):
            inside = atlas.region_mask(region) & fitted.mask_ & (pet > 0)
            mean = float(pet[inside].mean())
            # SUVR: the mean uptake of the reference region is 1, of the other region not.
            assert (abs(mean - 1) < 0.02) == (region == reference), (reference, region, mean)
    model.save(tmp_path / "m")
    loaded = NormativeModel.load(tmp_path / "m")
    assert loaded.pet_reference == "brainstem"
    np.testing.assert_array_equal(loaded.transform(patient.images).anomaly, model.transform(patient.images).anomaly)


def test_resume_after_a_settings_change_is_refused(sim_cohort, tmp_path):
    """A checkpoint of other settings is refused with one line naming it and the change.

    Continuing it would mix two runs (a learning-rate change) or fail deep inside torch
    (an architecture or schedule change).
    """
    settings = dict(AE_TEST_SETTINGS, epochs=1, channels=(4, 8, 8, 8))
    subjects = find_subjects(sim_cohort, group="control")[:5]  # few: several fits follow
    NormativeModel("ae", **settings).fit(subjects, workdir=tmp_path, progress=False)
    checkpoint = tmp_path / "checkpoint.pt"
    assert checkpoint.exists()  # the API keeps it (the CLI removes it)
    for change, named in (({"channels": (8, 8, 8, 8)}, "network architecture"), ({"epochs": 2}, "epochs 1 -> 2"),
                          ({"lr": 1e-2}, "lr ")):
        with pytest.raises(AnomalyInputError) as excinfo:
            NormativeModel("ae", **dict(settings, **change)).fit(subjects, workdir=tmp_path, resume=True,
                                                                 progress=False)
        message = str(excinfo.value)
        assert "\n" not in message and str(checkpoint) in message and named in message, message
    resumed = NormativeModel("ae", **settings).fit(subjects, workdir=tmp_path, resume=True, progress=False)
    # Epoch 1 of each of the two default networks came from its checkpoint: no new training.
    assert len(resumed.history_) == resumed.cross_fit == 2


def test_missing_modality_is_scored_as_nan(ae_model_dir, sim_cohort):
    model = NormativeModel.load(ae_model_dir)
    subject = find_subjects(sim_cohort, group="patient")[0]
    images = {m: p for m, p in subject.images.items() if m != "pet"}
    score = model.transform(images)
    c = score.modalities.index("pet")
    assert not score.present[c]
    assert np.isnan(score.z[c]).all()
    assert np.isfinite(score.anomaly).all()


# ----------------------------------------------------------------- model files
def test_save_load_round_trip_gives_identical_scores(sim_cohort, tmp_path):
    subjects = find_subjects(sim_cohort)
    model = NormativeModel("zscore", resolution=4.0, device="cpu").fit(subjects, progress=False)
    patient = next(s for s in subjects if s.group == "patient")
    before = model.transform(patient.images, age=patient.age, sex=patient.sex)
    model.save(tmp_path / "m")
    after = NormativeModel.load(tmp_path / "m").transform(patient.images, age=patient.age, sex=patient.sex)
    np.testing.assert_array_equal(before.anomaly, after.anomaly)
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    for key in ("format", "kind", "format_version", "toolkit_version", "created", "grid", "modalities", "files"):
        assert key in meta
    assert meta["kind"] == "normative" and meta["format"] == "anomaly-model"
    assert {"torch_version", "monai_version", "python_version"} <= set(meta["created"])


def test_default_training_length_is_capped_in_steps_on_large_cohorts():
    # 20 epochs, but at most 400 optimisation steps per network: the fit time stops growing
    # with the cohort (100 controls, two networks of 50 in batches of 2: 16 epochs).
    from anomaly.normative.model import DEFAULT_EPOCHS, DEFAULT_MAX_STEPS

    model = NormativeModel()
    assert model.epochs is None and (DEFAULT_EPOCHS, DEFAULT_MAX_STEPS) == (20, 400)
    assert [model.training_epochs(n) for n in (8, 30, 40, 41, 50, 200, 2000)] == [20, 20, 20, 19, 16, 4, 1]
    assert model.training_epochs(50, world_size=2) == 20  # 25 controls per process
    assert NormativeModel(batch_size=4).training_epochs(50) == 20
    assert NormativeModel(epochs=30).training_epochs(2000) == 30  # an explicit length is kept
    with pytest.raises(AnomalyInputError, match="epochs"):
        NormativeModel(epochs=0)._check_params()


def test_estimator_contract_clone_get_and_set_params(zscore_model_dir):
    """scikit-learn's contract: parameters only from __init__, clone gives an unfitted copy."""
    from sklearn.base import BaseEstimator, clone

    model = NormativeModel("zscore", resolution=4.0, channels=(4, 8), seed=3)
    assert isinstance(model, BaseEstimator)
    params = model.get_params(deep=True)
    assert params["method"] == "zscore" and params["channels"] == (4, 8) and params["seed"] == 3
    copy = clone(model)
    assert copy is not model and copy.get_params() == params
    assert copy.set_params(seed=5, epochs=2) is copy and (copy.seed, copy.epochs) == (5, 2)
    fitted = NormativeModel.load(zscore_model_dir)
    learned = [k for k in vars(fitted) if k.endswith("_") and not k.startswith("_")]
    assert {"calibration_", "grid_", "mask_", "modalities_"} <= set(learned)
    unfitted = clone(fitted)
    assert not any(k.endswith("_") for k in vars(unfitted))
    with pytest.raises(RuntimeError, match="not fitted"):
        unfitted.transform({})


def test_score_is_a_deprecated_alias_of_transform(zscore_model_dir, sim_cohort):
    model = NormativeModel.load(zscore_model_dir)
    patient = find_subjects(sim_cohort, group="patient")[0]
    prep = model.preprocess(patient.images)
    with pytest.warns(FutureWarning, match="transform"):
        old = model.score(prep, age=patient.age, sex=patient.sex)
    new = model.transform(prep, age=patient.age, sex=patient.sex)
    np.testing.assert_array_equal(old.anomaly, new.anomaly)


def _as_legacy_normative(folder: Path) -> None:
    """Rewrite metadata.json as anomaly 0.1.0 wrote it: toolkit, version 1, files{}."""
    meta = json.loads((folder / "metadata.json").read_text())
    created = meta.pop("created")
    for key in ("format", "kind", "format_version", "toolkit"):
        meta.pop(key)
    legacy = {"format_version": 1, "toolkit": "anomaly", "toolkit_version": meta.pop("toolkit_version"),
              **{k: created[k] for k in ("torch_version", "monai_version", "python_version")}}
    files = meta.pop("files")
    (folder / "metadata.json").write_text(json.dumps({**legacy, **meta, "files": files}))


def test_folder_of_the_previous_layout_still_loads(ae_model_dir, sim_cohort, tmp_path):
    folder = _copy_model(ae_model_dir, tmp_path / "old")
    _as_legacy_normative(folder)
    old, new = NormativeModel.load(folder), NormativeModel.load(ae_model_dir)
    patient = find_subjects(sim_cohort, group="patient")[0]
    np.testing.assert_array_equal(old.transform(patient.images).anomaly, new.transform(patient.images).anomaly)
    _flip_a_byte(folder / "weights.safetensors")
    with pytest.raises(AnomalyModelError, match="weights.safetensors: SHA-256 does not match"):
        NormativeModel.load(folder)


def test_settings_a_folder_does_not_record_load_as_it_was_fitted(zscore_model_dir, tmp_path):
    """Folders written before cross-fitting and post-processing existed keep one
    network and a raw anomaly map, not today's defaults."""
    folder = _copy_model(zscore_model_dir, tmp_path / "m")
    meta = json.loads((folder / "metadata.json").read_text())
    for key in ("cross_fit", "median_filter", "erode_mask", "modality_rule", "map_smoothing", "map_rim"):
        meta["training"].pop(key)
    (folder / "metadata.json").write_text(json.dumps(meta))
    old = NormativeModel.load(folder)
    assert (old.cross_fit, old.median_filter, old.median_size(), old.erode_mask) == (1, 0, 0, 0)
    assert (old.modality_rule, old.map_smoothing_sigma(), old.map_rim_width()) == ("max", 0.0, 0.0)
    new = NormativeModel.load(zscore_model_dir)
    assert (new.cross_fit, new.median_filter, new.median_size(), new.modality_rule) == (2, None, 3, "pet-led")
    assert (new.map_smoothing_sigma(), new.map_rim_width()) == (0.0, 2.0)


def test_a_folder_with_an_unknown_modality_rule_is_refused(zscore_model_dir, tmp_path):
    folder = _copy_model(zscore_model_dir, tmp_path / "m")
    meta = json.loads((folder / "metadata.json").read_text())
    meta["training"]["modality_rule"] = "median"
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(AnomalyModelError, match="inconsistent model settings.*modality_rule"):
        NormativeModel.load(folder)


def test_a_crs_model_folder_is_not_a_normative_model(zscore_model_dir, tmp_path):
    folder = _copy_model(zscore_model_dir, tmp_path / "m")
    meta = json.loads((folder / "metadata.json").read_text())
    (folder / "metadata.json").write_text(json.dumps(dict(meta, kind="crs")))
    with pytest.raises(AnomalyModelError, match="not an anomaly normative model"):
        NormativeModel.load(folder)


def test_one_device_resolver_with_one_message():
    from anomaly.io import AnomalyInputError, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(AnomalyInputError, match="--device: expected auto, cpu or cuda; got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(AnomalyInputError, match="no CUDA device is available"):
            resolve_device("cuda")


def _flip_a_byte(path: Path) -> None:
    """Tamper with a file: its SHA-256 no longer matches the model's metadata."""
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_weights_are_refused(ae_model_dir, tmp_path):
    folder = _copy_model(ae_model_dir, tmp_path / "m")
    _flip_a_byte(folder / "weights.safetensors")
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

    done = subprocess.run(_fit_argv(sim_cohort, resumed, epochs) + ["--resume"], check=False, env=_env(),
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
    result = subprocess.run(argv, check=False, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    model = NormativeModel.load(out)
    assert model.history_ and len(model.history_) == model.cross_fit == 2  # one epoch per network
    log = pd.read_csv(out / "training_log.csv")  # the first network's log
    assert list(log["epoch"]) == [1]
