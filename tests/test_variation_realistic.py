"""The realistic simulator preset (issue 12, second round) and anomaly-map post-processing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from anomaly.normative.maps import postprocess_anomaly
from anomaly.simulate import SimulationConfig, simulate_subject, simulation_config

RES = 6.0


def _frontal_patient(seed: int, config: SimulationConfig):
    return simulate_subject(seed, group="patient", resolution=RES, modalities=("pet",), damage={"frontal": 1.0},
                            distractors=[], global_metabolism=1.0, return_twins=True, config=config)


def test_realistic_subjects_are_reproducible_from_the_seed():
    cfg = simulation_config("realistic", site="b")
    first, again, other = (_frontal_patient(s, cfg) for s in (5, 5, 6))
    np.testing.assert_array_equal(first.images["pet"], again.images["pet"])
    np.testing.assert_array_equal(first.focal_mask, again.focal_mask)
    assert not np.array_equal(first.images["pet"], other.images["pet"])


def test_the_truth_is_drawn_in_the_subjects_own_brain(tmp_path):
    """Changes lie inside the subject's brain mask, which differs from the template's after
    the realistic deformation; focal detection is scored over that brain (EVALUATION.md)."""
    from anomaly.preprocess import Grid, template_images
    from anomaly.simulate.truth import read_truth
    from anomaly.simulate.writer import write_subject

    p = _frontal_patient(4, simulation_config("realistic"))
    assert p.brain_mask.dtype == bool and p.brain_mask.shape == p.focal_mask.shape
    assert p.focal_mask.any() and not (p.lesion_mask & ~p.brain_mask).any()
    grid = Grid(shape=p.brain_mask.shape, affine=p.affine, resolution=RES)
    template = template_images(grid)["mask"] > 0.5
    assert (template != p.brain_mask).mean() > 0.01  # millimetres of warp and atrophy
    write_subject(tmp_path, "pt001", p, missing=())
    truth_dir = tmp_path / "derivatives" / "simulation"
    truth = read_truth(truth_dir, "pt001", grid, template)
    np.testing.assert_array_equal(truth.brain, p.brain_mask)
    np.testing.assert_array_equal(truth.focal_evaluated, p.brain_mask & ~(p.lesion_mask & ~p.focal_mask))
    (truth_dir / "sub-pt001" / "sub-pt001_desc-brain_mask.nii.gz").unlink()  # an older cohort
    np.testing.assert_array_equal(read_truth(truth_dir, "pt001", grid, template).brain, template)


def test_realistic_hypometabolism_is_subtler_than_the_default():
    """A fully damaged family loses 1 - pet_drop of its uptake: 0.3 (default) vs 0.6 (realistic)."""
    def deepest_drop(config):
        p = _frontal_patient(3, config)
        healthy = p.twins["global"]["pet"]
        ratio = p.images["pet"][p.focal_mask] / np.maximum(healthy[p.focal_mask], 1e-6)
        return p.focal_mask.sum(), float(np.quantile(ratio, 0.05))

    n_default, low_default = deepest_drop(SimulationConfig(pet_noise=0.0))
    n_real, low_real = deepest_drop(simulation_config("realistic", pet_noise=0.0))
    assert 0.25 < low_default < 0.45 and 0.55 < low_real < 0.75
    assert n_real < n_default  # fewer voxels change by more than the 10 % of the truth mask


def test_postprocessing_removes_isolated_voxels_and_the_mask_edge():
    mask = np.zeros((12, 12, 12), bool)
    mask[1:11, 1:11, 1:11] = True
    anomaly = np.zeros(mask.shape, np.float32)
    anomaly[3, 3, 3] = 9.0  # one noisy voxel
    anomaly[5:9, 5:9, 5:9] = 4.0  # a lesion of 4^3 voxels
    anomaly[1, 6, 6] = 5.0  # on the edge of the mask
    median = postprocess_anomaly(anomaly, mask, median_size=3)
    assert median[3, 3, 3] == 0 and median[6, 6, 6] == 4.0 and median[1, 6, 6] == 0
    eroded = postprocess_anomaly(anomaly, mask, erode_voxels=1)
    assert eroded[1, 6, 6] == 0 and eroded[3, 3, 3] == 9.0 and eroded[6, 6, 6] == 4.0
    np.testing.assert_array_equal(postprocess_anomaly(anomaly, mask), anomaly)
    assert not postprocess_anomaly(anomaly, mask, median_size=3, erode_voxels=1)[~mask].any()
    # Smoothing keeps a lesion's peak where it was, lowers a lone voxel far more than the
    # lesion, and lowers the mask's edge (zero outside the brain is smoothed in).
    smooth = postprocess_anomaly(anomaly, mask, smooth_sigma=1.0)
    assert smooth[5:9, 5:9, 5:9].max() == smooth.max() and not smooth[~mask].any()
    assert smooth[6, 6, 6] > 0.6 * anomaly[6, 6, 6] and smooth[3, 3, 3] < 0.1 * anomaly[3, 3, 3]
    np.testing.assert_allclose(smooth, ndimage.gaussian_filter(anomaly, 1.0) * mask, atol=1e-6)
    uniform = postprocess_anomaly(mask.astype(np.float32), mask, smooth_sigma=1.0)
    assert uniform[1, 6, 6] < 0.9 and uniform[6, 6, 6] > 0.99


def test_the_rim_gives_voxels_outside_the_mask_their_nearest_brain_voxel(rng):
    from anomaly.normative.maps import extend_into_rim

    # A blob-shaped mask, so that most rim voxels have one nearest mask voxel.
    mask = ndimage.gaussian_filter(rng.normal(size=(16, 16, 16)), 2.0) > 0.02
    mask[:2], mask[-2:], mask[:, :2], mask[:, -2:], mask[:, :, :2], mask[:, :, -2:] = (False,) * 6
    values = rng.uniform(1, 2, size=mask.shape).astype(np.float32)
    out = extend_into_rim(values, mask, 2.0)
    np.testing.assert_array_equal(out[mask], values[mask])
    inside = np.argwhere(mask)
    distance = ndimage.distance_transform_edt(~mask)
    checked = 0
    for voxel in np.argwhere(~mask):
        if distance[tuple(voxel)] > 2.0:
            assert out[tuple(voxel)] == 0
            continue
        d2 = ((inside - voxel) ** 2).sum(axis=1)
        nearest = np.flatnonzero(d2 == d2.min())
        assert out[tuple(voxel)] in values[tuple(inside[nearest].T)]  # one of the nearest (ties)
        checked += len(nearest) == 1
    assert checked > 100
    np.testing.assert_array_equal(extend_into_rim(values, mask, 0.0), values * mask)
    np.testing.assert_array_equal(extend_into_rim(values, np.zeros_like(mask), 2.0), 0 * values)
    # Through the post-processing: last, and from the eroded mask when the mask is eroded.
    cube = np.zeros((12, 12, 12), bool)
    cube[2:10, 2:10, 2:10] = True
    anomaly = rng.uniform(1, 2, size=cube.shape).astype(np.float32) * cube
    rim = postprocess_anomaly(anomaly, cube, rim_voxels=2)
    assert rim[0, 5, 6] == rim[1, 5, 6] == anomaly[2, 5, 6] and rim[0, 0, 0] == 0
    eroded = postprocess_anomaly(anomaly, cube, erode_voxels=1, rim_voxels=1)
    assert eroded[2, 5, 6] == anomaly[3, 5, 6] and eroded[1, 5, 6] == 0


def test_separable_median_is_the_median_along_each_axis_in_turn(rng):
    from anomaly.normative.maps import median_size_for_mm, separable_median

    volume = rng.normal(size=(7, 8, 9)).astype(np.float32)
    expected = volume
    for axis in range(3):  # scipy's 1D median with zero padding, axis by axis
        expected = ndimage.median_filter(expected, size=[5 if a == axis else 1 for a in range(3)], mode="constant")
    np.testing.assert_allclose(separable_median(volume, 5), expected, atol=1e-6)
    np.testing.assert_array_equal(separable_median(volume, 1), volume)
    assert [median_size_for_mm(10, r) for r in (1.5, 2, 3, 4)] == [7, 5, 3, 3]
    assert median_size_for_mm(0, 2) == 0


def test_model_post_processing_is_applied_at_scoring_and_saved(zscore_model_dir, sim_cohort, tmp_path):
    import pytest

    from anomaly.io import AnomalyInputError, find_subjects
    from anomaly.normative import NormativeModel

    model = NormativeModel.load(zscore_model_dir)
    # By default a median filter of about 10 mm (3 voxels on this 4 mm grid), no
    # smoothing, no erosion, and a rim of 8 mm (2 voxels) outside the brain mask.
    assert (model.median_filter, model.median_size(), model.erode_mask) == (None, 3, 0)
    assert (model.map_smoothing, model.map_smoothing_sigma()) == (None, 0.0)
    assert (model.map_rim, model.map_rim_width()) == (None, 2.0)
    patient = find_subjects(sim_cohort, group="patient")[0]
    prep = model.preprocess(patient.images)
    default = model.transform(prep, age=patient.age, sex=patient.sex)
    model.set_params(median_filter=0, map_rim=0)
    plain = model.transform(prep, age=patient.age, sex=patient.sex)
    assert not plain.anomaly[~model.mask_].any()
    np.testing.assert_array_equal(default.anomaly, postprocess_anomaly(plain.anomaly, model.mask_, median_size=3,
                                                                       rim_voxels=2))
    assert default.anomaly[~model.mask_].any()  # the rim
    np.testing.assert_array_equal(default.z, plain.z)
    model.set_params(map_smoothing=0.5)
    smoothed = model.transform(prep, age=patient.age, sex=patient.sex)
    np.testing.assert_allclose(smoothed.anomaly, postprocess_anomaly(plain.anomaly, model.mask_, smooth_sigma=0.5),
                               atol=1e-6)
    model.set_params(median_filter=3, erode_mask=1, map_smoothing=None)
    post = model.transform(prep, age=patient.age, sex=patient.sex)
    np.testing.assert_array_equal(post.z, plain.z)  # only the combined map changes
    np.testing.assert_array_equal(post.anomaly, postprocess_anomaly(plain.anomaly, model.mask_, median_size=3,
                                                                    erode_voxels=1))
    assert not np.array_equal(post.anomaly, plain.anomaly)
    model.save(tmp_path / "post")
    again = NormativeModel.load(tmp_path / "post")
    assert (again.median_filter, again.erode_mask) == (3, 1)
    np.testing.assert_array_equal(again.transform(prep, age=patient.age, sex=patient.sex).anomaly, post.anomaly)
    for bad in ({"median_filter": -1}, {"erode_mask": 1.5}, {"map_smoothing": -0.5},
                {"map_smoothing": float("nan")}, {"map_smoothing": "1"}, {"map_rim": -1}, {"map_rim": float("inf")}):
        with pytest.raises(AnomalyInputError, match=next(iter(bad))):
            NormativeModel(**bad)._check_params()


def test_fit_normative_options_store_the_post_processing(sim_cohort, tmp_path):
    import json

    from anomaly.cli import main

    out = tmp_path / "model"
    argv = ["fit-normative", str(sim_cohort), "--out", str(out), "--method", "zscore", "--resolution", "6",
            "--median-filter", "3", "--erode-mask", "1", "--map-smoothing", "0.75", "--map-rim", "1.5", "--quiet"]
    assert main(argv) == 0
    training = json.loads((out / "metadata.json").read_text())["training"]
    assert (training["median_filter"], training["erode_mask"], training["map_smoothing"], training["map_rim"]) \
        == (3, 1, 0.75, 1.5)
    for option, value in (("--median-filter", "-2"), ("--map-smoothing", "-1"), ("--map-smoothing", "nan"),
                          ("--map-rim", "-1")):
        bad = tmp_path / f"bad{option}{value}"
        assert main(["fit-normative", str(sim_cohort), "--out", str(bad), option, value]) == 2
        assert not bad.exists()


def test_the_detection_benchmark_gives_the_classical_reference_the_models_rim(zscore_model_dir, sim_cohort):
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.normative.maps import extend_into_rim
    from benchmarks._classical import ClassicalReference
    from benchmarks.detection import subject_maps

    model = NormativeModel.load(zscore_model_dir)
    classical = ClassicalReference(model.grid_, model.mask_, model._reference_masks(model.grid_)["cerebellum"])
    classical.fit(find_subjects(sim_cohort, group="control"))
    patient = find_subjects(sim_cohort, group="patient")[0]
    maps = subject_maps(model, classical, patient, "auto")
    reference = maps[("classical", "pet-led")]
    assert not reference[~model.mask_].any()
    np.testing.assert_array_equal(maps[("classical+rim", "pet-led")], extend_into_rim(reference, model.mask_, 2.0))
    # The toolkit's own map and its no-rim ablation differ only outside the brain mask.
    own, no_rim = maps[("default", "pet-led")], maps[("zscore+no-rim", "pet-led")]
    np.testing.assert_array_equal(own[model.mask_], no_rim[model.mask_])
    assert own[~model.mask_].any() and not no_rim[~model.mask_].any()
