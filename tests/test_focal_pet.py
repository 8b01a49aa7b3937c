"""Focal PET deviation independent of the global level, the best-hemisphere global level
and their norms from the controls (anomaly.atlas.petlevels, anomaly.normative.regional)."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import t as student_t

from anomaly.atlas import NON_CORTICAL, Atlas, RegionStats
from anomaly.atlas.petlevels import (
    LOGRATIO_SD_FLOOR,
    GlobalLevelNorm,
    LogRatioNorm,
    PETNorms,
    hemisphere_levels,
    hemisphere_masks,
    pet_log_ratios,
)
from anomaly.cli.main import main
from anomaly.cli.scorer import Scorer
from anomaly.io import AnomalyModelError, find_subjects
from anomaly.normative import NormativeModel
from anomaly.preprocess import Grid

ATLAS = "neuromorphometrics"


@pytest.fixture(scope="module")
def scorer(zscore_model_dir):
    """A scorer of the session's z-score model (both shipped atlases)."""
    return Scorer(NormativeModel.load(zscore_model_dir), (ATLAS, "aal"))


@pytest.fixture(scope="module")
def patient_prep(scorer, sim_cohort):
    """The first simulated patient, preprocessed on the model grid."""
    patient = find_subjects(sim_cohort, group="patient")[0]
    return scorer.model.preprocess(patient.images)


def scaled_pet(scorer, prep, factor: float, where: np.ndarray | None = None):
    """``prep`` with its PET SUVR multiplied by ``factor`` (everywhere or at ``where``)."""
    c = scorer.model.modalities_.index("pet")
    data = prep.data.copy()
    data[c] = data[c] * np.where(True if where is None else where, np.float32(factor), np.float32(1.0))
    return replace(prep, data=data)


def focal_and_global(scorer, prep):
    score = scorer.model.transform(prep)
    glob = scorer.global_pet(score)
    return scorer.region_tables(score, glob)[ATLAS], glob


# ----------------------------------------------------------------- scale invariance
def test_focal_logratio_is_unchanged_when_the_whole_pet_is_scaled(scorer, patient_prep):
    """The issue's test: a subject's whole PET x 0.6 (a diffuse drop) leaves the focal
    deviation as it was, while the z difference and the global level move."""
    table, glob = focal_and_global(scorer, patient_prep)
    low_table, low_glob = focal_and_global(scorer, scaled_pet(scorer, patient_prep, 0.6))

    focal = table["pet_focal_logratio_z"].to_numpy()
    assert np.isfinite(focal).sum() > 100
    np.testing.assert_allclose(low_table["pet_focal_logratio_z"], focal, rtol=2e-4, atol=1e-3)
    np.testing.assert_allclose(low_table["pet_focal_logratio"], table["pet_focal_logratio"], rtol=2e-4, atol=1e-4)
    np.testing.assert_allclose(low_glob["global_cortical_pet_percent"], 0.6 * glob["global_cortical_pet_percent"],
                               rtol=1e-5)
    # The old focal measure (a z difference in z units) is not scale-free.
    moved = np.abs(low_table["pet_focal_z_mean"] - table["pet_focal_z_mean"])
    assert np.nanmax(moved) > 0.5


def test_scaling_the_cortex_moves_only_subcortical_ratios_by_the_log_factor(scorer, patient_prep):
    """Cortical regions x 0.6: their ratios stay, every other region's rises by log(1/0.6)."""
    atlas = next(a for a in scorer.atlases if a.name == ATLAS)
    labels = atlas.label_array()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        non_cortex = atlas.region_mask(NON_CORTICAL)
    cortical = (labels > 0) & ~non_cortex
    assert (scorer.cortex_mask <= cortical).all()  # the cortex of the denominator is scaled too
    table, _ = focal_and_global(scorer, patient_prep)
    low_table, _ = focal_and_global(scorer, scaled_pet(scorer, patient_prep, 0.6, cortical))

    index = table["index"].to_numpy()
    in_cortex = np.isin(index, np.unique(labels[cortical]))
    diff = (low_table["pet_focal_logratio"] - table["pet_focal_logratio"]).to_numpy()
    finite = np.isfinite(diff)
    np.testing.assert_allclose(diff[finite & in_cortex], 0.0, atol=2e-4)
    np.testing.assert_allclose(diff[finite & ~in_cortex], math.log(1 / 0.6), atol=2e-4)
    assert (finite & ~in_cortex).sum() >= 10


# ----------------------------------------------------------------- the controls' norms
def test_model_records_each_controls_log_ratios(zscore_model_dir, sim_cohort):
    """The stored mean and SD of a region's ratio equal numpy's over the controls' PET."""
    model = NormativeModel.load(zscore_model_dir)
    norms = model.pet_levels_
    assert set(norms.log_ratio) == {"neuromorphometrics", "aal"}
    scorer_like = Scorer(model, (ATLAS,))
    atlas, stats = scorer_like.atlases[0], scorer_like._stats[0]
    norm = norms.log_ratio[ATLAS]
    assert norm.matches(stats.index, stats.n_voxels)
    c = model.modalities_.index("pet")
    regions = {"Left_Thalamus_Proper": [], "Right_Cerebellum_Exterior": []}
    best = []
    sides = hemisphere_masks(model.grid_.affine, scorer_like.cortex_mask)
    for control in find_subjects(sim_cohort, group="control"):
        pet = model.preprocess(control.images).data[c].astype(np.float64)
        covered = pet != 0
        cortex = pet[scorer_like.cortex_mask & covered].mean()
        for name, ratios in regions.items():
            voxels = atlas.region_mask(f"^{name}$") & model.mask_ & covered
            ratios.append(np.log(pet[voxels].mean() / cortex))
        best.append(max(hemisphere_levels(np.where(covered, pet, np.nan), model.control_mean_[c],
                                          sides).values()))
    for name, ratios in regions.items():
        row = int(np.flatnonzero(stats.names == name)[0])
        assert norm.n[row] == len(ratios) == 10
        # The fit reads the controls from its float16 cache: a few 1e-4 apart.
        np.testing.assert_allclose(norm.mean[row], np.mean(ratios), atol=2e-3)
        np.testing.assert_allclose(norm.sd[row], np.std(ratios, ddof=1), rtol=0.05, atol=1e-3)
    np.testing.assert_allclose(norms.global_level.best_mean, np.mean(best), rtol=2e-3)
    np.testing.assert_allclose(norms.global_level.best_sd, np.std(best, ddof=1), rtol=0.05)
    assert norms.global_level.n == 10


def test_norms_round_trip_through_json():
    norm = LogRatioNorm.from_ratios(np.array([3, 5, 9]), np.array([10, 4, 7]),
                                    np.array([[0.1, np.nan, -0.2], [0.3, np.nan, -0.1], [0.2, 0.5, np.nan],
                                              [0.2, np.nan, -0.3]]))
    np.testing.assert_allclose(norm.mean, [0.2, np.nan, -0.2])
    np.testing.assert_allclose(norm.sd, [np.std([0.1, 0.3, 0.2, 0.2], ddof=1), np.nan, 0.1])
    assert norm.n.tolist() == [4, 1, 3]  # one control covers region 5: no norm for it
    norms = PETNorms({"a": norm}, GlobalLevelNorm.from_levels(np.array([101.0, 99, 104, np.nan]),
                                                              np.array([100.0, 98, 102, 100])))
    back = PETNorms.from_dict(json.loads(json.dumps(norms.to_dict())))
    np.testing.assert_array_equal(back.log_ratio["a"].sd, norm.sd)
    assert back.global_level == norms.global_level and back.global_level.n == 3
    assert back.for_atlas("a", np.array([3, 5, 9]), np.array([10, 4, 7])) is not None
    assert back.for_atlas("a", np.array([3, 5, 9]), np.array([10, 4, 8])) is None  # another atlas's sizes
    assert back.for_atlas("b", np.array([3, 5, 9]), np.array([10, 4, 7])) is None


def test_deviation_uses_the_sd_floor():
    norm = LogRatioNorm.from_ratios(np.array([1, 2]), np.array([5, 5]),
                                    np.array([[0.0, 0.1], [0.0, 0.3], [0.0, 0.2]]))
    diff, z = norm.deviation(np.array([-0.05, 0.0]))
    np.testing.assert_allclose(diff, [-0.05, -0.2])
    np.testing.assert_allclose(z, [-0.05 / LOGRATIO_SD_FLOOR, -0.2 / 0.1])


def test_log_ratios_of_missing_or_non_positive_means_are_nan():
    ratios = pet_log_ratios(np.array([2.0, np.nan, 0.0, -1.0, 0.5]), 1.0)
    np.testing.assert_allclose(ratios, [math.log(2), np.nan, np.nan, np.nan, math.log(0.5)])
    assert np.isnan(pet_log_ratios(np.array([1.0]), math.nan)).all()


# ----------------------------------------------------------------- global level
def test_best_hemisphere_level_and_its_interval():
    """A hypometabolic left hemisphere: the right one is the level, against the controls' mean."""
    shape = (6, 3, 2)
    grid = Grid(shape, np.array([[4.0, 0, 0, -10], [0, 4, 0, 0], [0, 0, 4, 0], [0, 0, 0, 1]]), 4.0)
    cortex = np.ones(shape, bool)
    left, right = hemisphere_masks(grid.affine, cortex)
    x = np.arange(6) * 4.0 - 10  # -10 -6 -2 2 6 10: no voxel on the midline
    assert left[:, 0, 0].tolist() == list(x < 0) and right[:, 0, 0].tolist() == list(x > 0)
    normal = np.full(shape, 2.0)
    pet = np.where(left, 1.0, 1.6)  # left 50%, right 80% of normal
    from anomaly.atlas import global_cortical_pet

    z = np.zeros(shape)
    norm = GlobalLevelNorm(best_mean=104.0, best_sd=5.2, whole_mean=100.0, whole_sd=5.0, n=12)
    level = global_cortical_pet(pet, z, normal, cortex, hemispheres=(left, right), norm=norm)
    assert level["global_cortical_pet_hemisphere"] == "right"
    assert level["global_cortical_pet_percent_by_hemisphere"] == {"left": 50.0, "right": 80.0}
    np.testing.assert_allclose(level["global_cortical_pet_percent_whole_cortex"], 65.0)
    np.testing.assert_allclose(level["global_cortical_pet_percent"], 100 * 80 / 104)
    np.testing.assert_allclose(level["global_cortical_pet_percent_sd"], 5.0)
    half = student_t.ppf(0.975, 11) * 0.05 * math.sqrt(1 + 1 / 12)
    np.testing.assert_allclose(level["global_cortical_pet_percent_ci95"],
                               [100 * 80 / 104 * (1 - half), 100 * 80 / 104 * (1 + half)], atol=0.006)
    # A model without the controls' levels: the hemisphere against the normative image, no interval.
    old = global_cortical_pet(pet, z, normal, cortex, hemispheres=(left, right))
    np.testing.assert_allclose(old["global_cortical_pet_percent"], 80.0)
    assert "global_cortical_pet_percent_ci95" not in old
    # Without hemispheres: the whole-cortex level, as before.
    np.testing.assert_allclose(global_cortical_pet(pet, z, normal, cortex)["global_cortical_pet_percent"], 65.0)


# ----------------------------------------------------------------- old model folders
def strip_pet_levels(model_dir, folder):
    shutil.copytree(model_dir, folder)
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["pet_levels"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def test_model_without_norms_scores_with_na_focal_columns_and_one_warning(zscore_model_dir, sim_cohort,
                                                                          tmp_path):
    old = strip_pet_levels(zscore_model_dir, tmp_path / "old")
    model = NormativeModel.load(old)
    assert model.pet_levels_ is None
    with pytest.warns(UserWarning, match="pet_focal_logratio.*fitted before") as record:
        scorer = Scorer(model, (ATLAS,))
    assert sum("pet_focal_logratio" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no further warning per subject
        score = model.transform(model.preprocess(find_subjects(sim_cohort, group="patient")[0].images))
        glob = scorer.global_pet(score)
        table = scorer.region_tables(score, glob)[ATLAS]
    assert table["pet_focal_logratio_z"].isna().all() and table["pet_focal_z_mean"].notna().any()
    assert math.isfinite(glob["global_cortical_pet_percent"]) and "global_cortical_pet_percent_sd" not in glob


def test_malformed_norms_are_a_model_error(zscore_model_dir, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(zscore_model_dir, folder)
    meta = json.loads((folder / "metadata.json").read_text())
    meta["pet_levels"]["log_ratio"][ATLAS]["sd"] = meta["pet_levels"]["log_ratio"][ATLAS]["sd"][:-1]
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(AnomalyModelError, match="metadata.json: unreadable pet_levels"):
        NormativeModel.load(folder)


def test_user_atlas_gets_na_focal_columns(zscore_model_dir, tmp_path):
    """A user atlas named like a shipped one but with other regions gets no shipped norm."""
    model = NormativeModel.load(zscore_model_dir)
    labels = np.zeros(model.grid_.shape, np.int16)
    labels[: labels.shape[0] // 2][model.mask_[: labels.shape[0] // 2]] = 1
    labels[labels.shape[0] // 2:][model.mask_[labels.shape[0] // 2:]] = 2
    atlas = Atlas(model.grid_.to_image(labels), {1: "Half_A", 2: "Half_B"}, name="aal")
    stats = RegionStats(atlas, model.mask_)
    assert model.pet_levels_.for_atlas("aal", stats.index, stats.n_voxels) is None


# ----------------------------------------------------------------- written outputs
def test_scores_json_table_and_report_carry_the_new_measures(sim_cohort, zscore_model_dir, tmp_path):
    patient = find_subjects(sim_cohort, group="patient")[0]
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["score", *map(str, patient.images.values()), "--model", str(zscore_model_dir),
                     "--out", str(out), "--quiet"])
    assert code == 0
    folder = out / f"sub-{patient.label}"
    values = json.loads((folder / f"sub-{patient.label}_scores.json").read_text())
    assert values["modalities_present"] == ["T1w", "FLAIR", "pet"]
    assert values["global_cortical_pet_reference"] == "cerebellum"
    low, high = values["global_cortical_pet_percent_ci95"]
    assert low < values["global_cortical_pet_percent"] < high
    best_mean = NormativeModel.load(zscore_model_dir).pet_levels_.global_level.best_mean
    best = max(values["global_cortical_pet_percent_by_hemisphere"].values())  # rounded to 0.01
    np.testing.assert_allclose(values["global_cortical_pet_percent"], 100 * best / best_mean, rtol=2e-4)
    table = next(folder.glob("*_atlas-neuromorphometrics_regions.tsv")).read_text().splitlines()
    assert table[0].split("\t")[-2:] == ["pet_focal_logratio", "pet_focal_logratio_z"]
    report = (folder / f"sub-{patient.label}_report.html").read_text()
    assert "pet focal logratio z" in report and "best-preserved hemisphere" in report
    assert f"95% interval {low:.0f}&ndash;{high:.0f}%" in report
    assert "reference region: cerebellum" in report


def test_levels_by_reference_follow_the_headline():
    from anomaly.qc.pet import rescale_levels

    levels = {"cerebellum": 50.0, "brainstem": 40.0, "global": None}
    assert rescale_levels(levels, "cerebellum", 60.0) == {"cerebellum": 60.0, "brainstem": 48.0, "global": None}
    assert rescale_levels({"cerebellum": None, "brainstem": 40.0}, "cerebellum", 60.0) == \
        {"cerebellum": None, "brainstem": 40.0}  # nothing to rescale by


@pytest.mark.parametrize(("interval", "straddles"), [([38.0, 47.0], True), ([44.0, 52.0], False)])
def test_report_states_the_interval_and_whether_it_straddles_the_awareness_level(tmp_path, interval,
                                                                                 straddles):
    from anomaly.report.html import render_subject_report

    path = render_subject_report(
        tmp_path / "r.html", subject={"participant_id": "sub-x"}, model={}, figures={}, top_regions=None,
        qc={}, global_metabolism={"global_cortical_pet_percent": 45.2, "pet_reference": "brainstem",
                                  "global_cortical_pet_percent_ci95": interval,
                                  "global_cortical_pet_measure": "best-preserved hemisphere (left)"})
    text = path.read_text()
    assert f"95% interval {interval[0]:.0f}&ndash;{interval[1]:.0f}%" in text
    assert "reference region: brainstem" in text and "Measured as: best-preserved hemisphere (left)" in text
    assert ("does not place the patient on either side" in text) is straddles


def test_global_coupling_recovers_each_regions_slope_despite_damaged_patients(rng):
    """Thalamus-like regions (slope -1: they do not follow the cortex) and cortex-like
    ones (0); three patients with focal damage in region 0 do not move its slope."""
    from anomaly.atlas.petlevels import GlobalCoupling

    n = 40
    percent = rng.uniform(35, 100, n)
    x = np.log(percent / 100)
    slopes = np.array([-1.0, -0.6, 0.0])
    y = x[:, None] * slopes + rng.normal(0, 0.02, (n, 3))
    y[:3, 0] -= 0.5  # focal damage
    y[5, 2] = np.nan  # a region the scan does not cover
    coupling = GlobalCoupling().fit(y, percent)
    np.testing.assert_allclose(coupling.slope_, slopes, atol=0.08)
    assert coupling.n_.tolist() == [n, n, n - 1]
    adjusted = coupling.transform(y, percent)
    healthy = adjusted[3:]
    assert np.all(np.abs(spearman(healthy[:, 0], x[3:])) < 0.35)
    assert np.all(adjusted[:3, 0] < healthy[:, 0].min())  # damage stands out once the coupling is gone
    # A normal global level (the controls') is left as it is; an unknown one too.
    np.testing.assert_allclose(coupling.transform(y[:2], np.array([100.0, np.nan])), y[:2])
    few = GlobalCoupling(min_subjects=10).fit(y[:9], percent[:9])
    assert not few.slope_.any()
    back = GlobalCoupling.from_dict(json.loads(json.dumps(coupling.to_dict())))
    np.testing.assert_array_equal(back.transform(y, percent), adjusted)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)
