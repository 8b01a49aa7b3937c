"""Hybrid method, modality rules, augmentation, the self-check and local recalibration (issue 12)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly.cli import main
from anomaly.io import AnomalyInputError, find_subjects
from anomaly.normative import NormativeModel, combine_anomaly
from anomaly.normative.calibration import standardise
from anomaly.normative.modelio import WEIGHTS, sha256
from anomaly.normative.recalibrate import recalibrate
from anomaly.normative.selfcheck import best_method, inject_lesions


def test_stouffer_and_max_do_not_dilute_a_single_modality_lesion():
    mask = np.ones((2, 1, 1), bool)
    z = np.zeros((3, 2, 1, 1), np.float32)
    z[2, 0] = -4.0  # a PET-only lesion in voxel 0
    present = np.ones(3, bool)
    mods = ["T1w", "FLAIR", "pet"]
    assert combine_anomaly(z, present, mods, mask, rule="mean")[0, 0, 0] == pytest.approx(4 / 3)
    assert combine_anomaly(z, present, mods, mask, rule="stouffer")[0, 0, 0] == pytest.approx(4 / np.sqrt(3))
    assert combine_anomaly(z, present, mods, mask, rule="max")[0, 0, 0] == pytest.approx(4.0)
    assert combine_anomaly(z, present, mods, mask)[0, 0, 0] == pytest.approx(4.0)  # default: pet-led
    with pytest.raises(ValueError, match="rule"):
        combine_anomaly(z, present, mods, mask, rule="median")


def test_the_pet_led_rule_lets_mri_in_beyond_the_margin_and_where_pet_is_absent():
    from anomaly.normative.maps import MRI_MARGIN_Z

    mask = np.ones((4, 1, 1), bool)
    mods = ["T1w", "FLAIR", "pet"]
    z = np.zeros((3, 4, 1, 1), np.float32)
    z[1, 0] = 6.0                       # voxel 0: strong FLAIR lesion, normal PET
    z[0, 1], z[2, 1] = -2.5, -1.0       # voxel 1: T1w 2.5 over PET 1: PET leads
    z[2, 2] = -3.0                      # voxel 2: PET-only hypometabolism
    z[0, 3], z[2, 3] = -5.0, np.nan     # voxel 3: outside the PET field of view
    present = np.ones(3, bool)
    led = combine_anomaly(z, present, mods, mask)[:, 0, 0]
    assert led == pytest.approx([6.0 - MRI_MARGIN_Z, 1.0, 3.0, 5.0])
    assert combine_anomaly(z, present, mods, mask, rule="max")[:, 0, 0] == pytest.approx([6.0, 2.5, 3.0, 5.0])
    # A subject without PET: the largest MRI deviation, as the maximum gives it.
    no_pet = np.array([True, True, False])
    assert combine_anomaly(z, no_pet, mods, mask)[:, 0, 0] == pytest.approx([6.0, 2.5, 0.0, 5.0])
    # A model without a PET channel: the maximum.
    assert combine_anomaly(z[:2], present[:2], mods[:2], mask)[:, 0, 0] == pytest.approx([6.0, 2.5, 0.0, 5.0])


def test_fit_normative_refuses_an_unknown_modality_rule(sim_cohort, tmp_path, capsys):
    with pytest.raises(AnomalyInputError, match="modality_rule: expected one of pet-led, max"):
        NormativeModel(modality_rule="median")._check_params()
    assert main(["fit-normative", str(sim_cohort), "--out", str(tmp_path / "bad"), "--modality-rule", "median"]) == 2
    assert "invalid choice: 'median'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def _toy_atlas(shape: tuple[int, int, int]):
    """Four 'grey-matter' regions (two left/right pairs) and a ventricle on a 2 mm grid."""
    import nibabel as nib

    from anomaly.atlas import Atlas

    labels = np.zeros(shape, np.int32)
    labels[2:10, 2:18, 2:10], labels[10:18, 2:18, 2:10] = 1, 2
    labels[2:10, 2:18, 10:18], labels[10:18, 2:18, 10:18] = 3, 4
    labels[9:11, 9:11, 9:11] = 5
    names = {1: "Left_Precuneus", 2: "Right_Precuneus", 3: "Left_Thalamus", 4: "Right_Thalamus",
             5: "Left_Lateral_Ventricle"}
    return Atlas(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0])), names, name="toy")


def test_injected_lesions_are_reproducible_and_go_the_lesion_way():
    from anomaly.normative.selfcheck import LESION_TYPES, region_candidates

    rng = np.random.default_rng(0)
    mask = np.zeros((20, 20, 20), bool)
    mask[2:18, 2:18, 2:18] = True
    data = (1.0 + 0.1 * rng.standard_normal((3, 20, 20, 20))).astype(np.float32)
    present = np.ones(3, bool)
    mods = ["T1w", "FLAIR", "pet"]
    atlas = _toy_atlas(mask.shape)
    assert set(region_candidates(atlas, mask, 2.0).values()) == {"Left_Precuneus", "Right_Precuneus",
                                                                "Left_Thalamus", "Right_Thalamus"}
    a, truth, recs = inject_lesions(data, present, mods, mask, 2.0, np.random.default_rng(3), atlas=atlas)
    b, truth_b, recs_b = inject_lesions(data, present, mods, mask, 2.0, np.random.default_rng(3), atlas=atlas)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(truth, truth_b)
    assert recs == recs_b
    assert truth.any() and not (truth.astype(bool) & ~mask).any()
    assert [r["kind"] for r in recs] == ["hypometabolism"] * 2 + ["lesion"] * 3
    assert all(2.5 <= r["radius_mm"] <= 10 for r in recs[2:])
    regional, ball = truth == 1 + LESION_TYPES.index("hypometabolism"), truth == 1 + LESION_TYPES.index("lesion")
    assert regional.any() and ball.any()
    # Hypometabolism lowers PET only; the lesions lower T1w and PET and raise FLAIR.
    assert (a[2] / data[2])[regional].mean() < 0.95
    only_regional, _, _ = inject_lesions(data, present, mods, mask, 2.0, np.random.default_rng(3), atlas=atlas,
                                         n_blobs=0)
    np.testing.assert_array_equal(only_regional[:2], data[:2])
    assert only_regional[2][regional].mean() < data[2][regional].mean() - 0.05
    assert a[0][ball].mean() < data[0][ball].mean() and a[1][ball].mean() > data[1][ball].mean()
    assert a[2][ball].mean() < data[2][ball].mean()
    assert (a[:, ~mask] == data[:, ~mask]).all()
    # Without PET: no hypometabolism, lesions only.
    _, truth_mri, recs_mri = inject_lesions(data, np.array([True, True, False]), mods, mask, 2.0,
                                            np.random.default_rng(3), atlas=atlas)
    assert {r["kind"] for r in recs_mri} == {"lesion"} and set(np.unique(truth_mri)) <= {-1, 0, 2}


def test_self_check_finds_injected_lesions_and_is_written(ae_model_dir):
    meta = json.loads((ae_model_dir / "metadata.json").read_text())
    table = meta["self_check"]
    assert table["n_subjects"] >= 3
    assert set(table["methods"]) == {"ae", "zscore", "hybrid"}
    # Tiny fixture (7 training controls, 12 epochs, 3 calibration controls): regional
    # hypometabolism of 10-40 % is hard here, but every method must be well above chance.
    for method, row in table["methods"].items():
        assert row["auroc"] > 0.65 and row["auprc"] > 1.5 * table["prevalence"], (method, row)
    assert max(r["auroc"] for r in table["methods"].values()) > 0.75
    assert set(table["by_type"]) == {"hypometabolism", "lesion"}  # the fixture has PET and MRI
    # The PET-led anomaly map leaves injected hypometabolism to each method's PET z (the
    # autoencoder's finds it least: AUROC 0.649 here, the voxelwise model's 0.903) and lets
    # an injected MRI lesion in only beyond the margin over the PET z (ae 0.947, zscore
    # 0.843, hybrid 0.797; all above 0.9 under the maximum rule, which that costs).
    floors = {"lesion": (0.75, 0.9), "hypometabolism": (0.6, 0.85)}
    for kind, rows in table["by_type"].items():
        assert set(rows) == set(table["methods"])
        assert min(r["auroc"] for r in rows.values()) > floors[kind][0], (kind, rows)
        assert max(r["auroc"] for r in rows.values()) > floors[kind][1], (kind, rows)
        assert max(r["auprc"] for r in rows.values()) > 3 * table["prevalence_by_type"][kind], (kind, rows)
    assert {r["kind"] for s in table["lesions"] for r in s["lesions"]} == {"hypometabolism", "lesion"}
    assert best_method(table) in table["methods"]
    assert best_method({"methods": {"ae": {"auprc": 0.2}, "zscore": {"auprc": 0.3}}}) == "zscore"
    assert len(table["per_subject_auprc"]["hybrid"]) == table["n_subjects"]


def test_auto_leaves_hybrid_only_for_a_method_better_in_every_control():
    methods = {"ae": {"auprc": 0.30}, "zscore": {"auprc": 0.25}, "hybrid": {"auprc": 0.20}}
    # ae is better pooled but not in every control: hybrid stays.
    mixed = {"ae": [0.5, 0.1, 0.3], "zscore": [0.3, 0.3, 0.3], "hybrid": [0.2, 0.2, 0.2]}
    assert best_method({"methods": methods, "per_subject_auprc": mixed}) == "zscore"
    mixed["zscore"] = [0.3, 0.1, 0.3]
    assert best_method({"methods": methods, "per_subject_auprc": mixed}) == "hybrid"
    mixed["ae"] = [0.5, 0.3, 0.3]
    assert best_method({"methods": methods, "per_subject_auprc": mixed}) == "ae"
    assert best_method({"methods": {}}) == "hybrid"


def test_hybrid_map_is_the_mean_of_its_components_and_the_voxelwise_peak_searched_pet(ae_model_dir, sim_cohort):
    model = NormativeModel.load(ae_model_dir)
    subject = find_subjects(sim_cohort, group="patient")[0]
    prep = model.preprocess(subject.images)
    std = standardise(prep.data, prep.present, model.channel_mean_, model.channel_std_, model.mask_)
    z = model.component_z(std, prep.present, subject.age, subject.sex)
    pet = model.modalities_.index("pet")
    mri = [c for c in range(len(model.modalities_)) if c != pet]
    assert model.pet_peak_size_ > 0
    np.testing.assert_allclose(z["hybrid"][mri], 0.5 * (z["ae"] + z["zscore"])[mri], atol=1e-6)
    np.testing.assert_array_equal(z["hybrid"][pet], z["zscore"][pet])
    assert not np.allclose(z["ae"], z["zscore"])
    model.pet_peak_size_ = 0  # as in a folder written before the peak search: the mean everywhere
    z = model.component_z(std, prep.present, subject.age, subject.sex)
    np.testing.assert_allclose(z["hybrid"], 0.5 * (z["ae"] + z["zscore"]), atol=1e-6)
    # The ae model's transform is its ae component.
    np.testing.assert_allclose(model.transform(prep, age=subject.age, sex=subject.sex).z, z["ae"], atol=1e-6)


@pytest.fixture(scope="module")
def local_site(tmp_path_factory):
    """Four controls and one patient on another scanner site (b) than the fixture cohort."""
    from anomaly.simulate import simulate_cohort, simulation_config

    return simulate_cohort(tmp_path_factory.mktemp("site") / "bids", n_healthy=4, n_patients=1, seed=11,
                           resolution=4.0, missing_fraction=0.0, progress=False,
                           config=simulation_config(site="b"))


def test_recalibration_changes_z_statistics_and_not_the_weights(ae_model_dir, local_site, tmp_path):
    model = NormativeModel.load(ae_model_dir)
    before = {k: v.clone() for k, v in model.network_.state_dict().items()}
    new = recalibrate(model, find_subjects(local_site, group="control"))
    for old_cal, new_cal in ((model.calibration_, new.calibration_),
                             (model.voxel_calibration_, new.voxel_calibration_)):
        assert not np.allclose(old_cal.beta[0], new_cal.beta[0])
        assert not np.allclose(old_cal.sd, new_cal.sd)
        np.testing.assert_array_equal(old_cal.beta[1:], new_cal.beta[1:])  # slopes kept
    for key, value in new.network_.state_dict().items():
        assert (value == before[key]).all()
    np.testing.assert_array_equal(new.channel_mean_, model.channel_mean_)
    # The site's systematic offset is gone: the local controls' voxelwise mean z shrinks.
    def site_offset(m):
        zs = [m.transform(s.images, age=s.age, sex=s.sex).z[:, m.mask_]
              for s in find_subjects(local_site, group="control")]
        return float(np.nanmean(np.abs(np.nanmean(zs, axis=0))))

    assert site_offset(new) < 0.7 * site_offset(model)


def test_calibrate_command_writes_a_new_folder_and_never_the_input(ae_model_dir, local_site, tmp_path, capsys):
    out = tmp_path / "recal"
    before = sha256(ae_model_dir / "metadata.json")
    assert main(["calibrate", str(ae_model_dir), str(local_site), "--out", str(out), "--quiet"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["recalibration"]["n_local_controls"] == 4
    assert sha256(out / WEIGHTS) == sha256(ae_model_dir / WEIGHTS)
    assert NormativeModel.load(out).method_ == "ae"
    assert main(["calibrate", str(ae_model_dir), str(local_site), "--out", str(ae_model_dir)]) == 2
    assert sha256(ae_model_dir / "metadata.json") == before
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_augmentation_is_reproducible_from_the_seed_and_off_by_default():
    import torch

    from anomaly.normative.network import augment_batch

    images = torch.randn(2, 3, 12, 12, 12, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(12, 12, 12)
    mask[2:10, 2:10, 2:10] = 1

    def run(seed):
        return augment_batch(images, strength=1.0, generator=torch.Generator().manual_seed(seed), mask=mask)

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))
    assert float((run(4) - images)[..., mask == 1].abs().mean()) > 0.2  # it does change the batch
    assert (run(4)[..., mask == 0] == 0).all()
    untouched = torch.Generator().manual_seed(4)
    assert augment_batch(images, strength=0.0, generator=untouched, mask=mask) is images
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(4).get_state())  # nothing drawn
    assert NormativeModel().augment == 0.0


def test_median_size_in_mm_means_the_same_box_at_any_resolution():
    from anomaly.normative.maps import median_size_for_mm

    assert [median_size_for_mm(10.0, r) for r in (1.5, 2.0, 3.0, 4.0)] == [7, 5, 3, 3]
    assert median_size_for_mm(20.0, 4.0) == 5 and median_size_for_mm(4.0, 4.0) == 1
    assert median_size_for_mm(0.0, 2.0) == 0
