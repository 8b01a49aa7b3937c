"""PET peak search of the voxelwise component (``NormativeModel(pet_peak_search=...)``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from anomaly.normative.calibration import peak_search_in_mask


def _ribbon(shift: int, shape=(16, 16, 16)) -> np.ndarray:
    """A 'cortical ribbon' (a slab two voxels thick, uptake 4) on a background of 1,
    shifted by ``shift`` voxels along the first axis."""
    image = np.ones(shape, np.float32)
    image[6 + shift:8 + shift] = 4.0
    return image


def test_peak_search_takes_the_local_maximum_inside_the_mask_only():
    mask = np.zeros((16, 16, 16), bool)
    mask[2:14, 2:14, 2:14] = True
    image = _ribbon(0)
    image[~mask] = 100.0  # bright outside the brain: must not leak in
    peak = peak_search_in_mask(image, mask, 3)
    assert peak[5, 8, 8] == 4.0 and peak[8, 8, 8] == 4.0  # one voxel beyond the ribbon
    assert peak[4, 8, 8] == 1.0  # two voxels beyond it
    assert peak[2, 8, 8] == 1.0  # at the mask's edge, next to the bright outside
    assert not peak[~mask].any()
    np.testing.assert_array_equal(peak_search_in_mask(image, mask, 1), np.where(mask, image, 0))


def test_peak_search_removes_a_misregistration_from_the_controls_sd():
    """Controls whose ribbon is shifted by up to a voxel: a large voxelwise SD beside
    the ribbon without the peak search, none with it; a hypometabolic patient (uptake
    -25 % over the ribbon) still stands out."""
    mask = np.ones((16, 16, 16), bool)
    controls = np.stack([_ribbon(s) for s in (-1, 0, 1, 0, -1, 1)])
    peaks = np.stack([peak_search_in_mask(c, mask, 3) for c in controls])
    ribbon = np.s_[6:8, 8, 8]
    assert controls.std(0)[ribbon].min() > 1.0 and peaks.std(0)[ribbon].max() == 0.0
    patient = peak_search_in_mask(_ribbon(1) * np.float32(0.75), mask, 3)
    assert np.all(patient[ribbon] < peaks.mean(0)[ribbon] - 0.9)


def test_network_models_peak_search_the_pet_of_their_voxelwise_component(ae_model_dir, sim_cohort):
    from anomaly.io import AnomalyInputError, find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.normative.calibration import PET_PEAK_MM, standardise
    from anomaly.normative.maps import median_size_for_mm

    model = NormativeModel.load(ae_model_dir)
    # 12 mm by default: 3 voxels on this 4 mm grid (7 at 2 mm), recorded at fit, for every method.
    assert [median_size_for_mm(PET_PEAK_MM, r) for r in (1.5, 2, 3, 4)] == [9, 7, 5, 3]
    assert (model.pet_peak_search, model.pet_peak_size(), model.pet_peak_size_) == (None, 3, 3)
    assert json.loads((ae_model_dir / "metadata.json").read_text())["calibration"]["pet_peak_voxels"] == 3
    assert NormativeModel("zscore", pet_peak_search=0).pet_peak_size() == 0
    patient = find_subjects(sim_cohort, group="patient")[0]
    prep = model.preprocess(patient.images)
    std = standardise(prep.data, prep.present, model.channel_mean_, model.channel_std_, model.mask_)
    pet = model.modalities_.index("pet")
    searched = model._residual(std, prep.present, kind="zscore")
    ae = model._residual(std, prep.present, kind="ae")
    # Scoring follows the fitted search, not a parameter changed after the fit.
    model.set_params(pet_peak_search=0)
    np.testing.assert_array_equal(model._residual(std, prep.present, kind="zscore"), searched)
    model.pet_peak_size_ = 0
    plain = model._residual(std, prep.present, kind="zscore")
    others = [c for c in range(len(model.modalities_)) if c != pet]
    np.testing.assert_array_equal(searched[others], plain[others])
    inside = model.mask_
    assert (searched[pet][inside] >= plain[pet][inside] - 1e-5).mean() > 0.99  # a maximum, then smoothed
    assert not np.allclose(searched[pet], plain[pet])
    np.testing.assert_array_equal(model._residual(std, prep.present, kind="ae"), ae)  # the network's: unchanged
    for bad in (-1, 2.5, True):
        with pytest.raises(AnomalyInputError, match="pet_peak_search"):
            NormativeModel(pet_peak_search=bad)._check_params()


def test_zscore_models_peak_search_and_folders_written_before_do_not(zscore_model_dir, ae_model_dir, tmp_path):
    from anomaly.normative import NormativeModel

    assert NormativeModel.load(zscore_model_dir).pet_peak_size_ == 3
    folder = tmp_path / "old"
    shutil.copytree(ae_model_dir, folder, ignore=shutil.ignore_patterns("cache", "checkpoint*"))
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["training"]["pet_peak_search"] is None
    meta["training"].pop("pet_peak_search")  # as written before the option existed
    meta["calibration"].pop("pet_peak_voxels")
    (folder / "metadata.json").write_text(json.dumps(meta))
    old = NormativeModel.load(folder)
    assert (old.pet_peak_search, old.pet_peak_size_) == (0, 0)


def test_fit_normative_records_the_peak_search_and_rejects_a_bad_one(sim_cohort, tmp_path):
    from anomaly.cli import main

    out = tmp_path / "model"
    assert main(["fit-normative", str(sim_cohort), "--out", str(out), "--method", "zscore", "--resolution", "6",
                 "--pet-peak-search", "3", "--quiet"]) == 0
    training = json.loads((out / "metadata.json").read_text())["training"]
    assert training["pet_peak_search"] == 3
    assert main(["fit-normative", str(sim_cohort), "--out", str(tmp_path / "bad"), "--pet-peak-search", "-1"]) == 2
    assert not (tmp_path / "bad").exists()
