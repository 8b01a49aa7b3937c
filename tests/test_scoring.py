"""Tests for `anomaly score` (anomaly.cli.score, .scoring): region tables, outputs, shards, BIDS-App form.

The scoring runs reuse the session fixtures of conftest.py (simulated 4 mm cohort and
its fitted z-score model): one sharded run of the whole cohort with figures, shared by
the tests that read its outputs, and a few single-subject runs without figures.
"""

from __future__ import annotations

import html.parser
import json
import re
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from anomaly.atlas import Atlas, RegionStats, region_table, round_table
from anomaly.cli.main import main
from anomaly.cli.score import ScoreJob, jobs_from_inputs, shard_jobs, write_index
from anomaly.io import AnomalyInputError, find_subjects
from anomaly.normative import SubjectScore
from anomaly.preprocess import Grid

SPACE = "space-MNI152NLin2009cAsym"
MODALITIES = ["T1w", "FLAIR", "pet"]


def truth_table(bids: Path) -> pd.DataFrame:
    path = bids / "derivatives" / "simulation" / "truth.tsv"
    return pd.read_csv(path, sep="\t", na_values=["n/a"]).set_index("participant_id")


def read_tsv_text(path: Path) -> pd.DataFrame:
    """A region table as written: every cell as its text."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


class Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs.append(dict(attrs)["href"])


# ------------------------------------------------------------ tiny hand-made subject
@pytest.fixture
def tiny_subject(rng):
    """A SubjectScore on a 6 x 5 x 4 grid, a 3-region atlas and a brain mask.

    FLAIR is missing (NaN everywhere); PET does not cover two brain voxels (NaN).
    """
    shape = (6, 5, 4)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    grid = Grid(shape, affine, 4.0)
    labels = np.zeros(shape, np.int32)
    labels[:3, :, :2] = 1
    labels[3:, :, :2] = 2
    labels[:, :2, 2:] = 7
    mask = np.ones(shape, bool)
    mask[0, 0, :] = False  # atlas voxels outside the brain must not count
    mask[5, 4, 3] = False
    z = rng.normal(0.0, 1.8, size=(3, *shape)).astype(np.float32)
    z[1] = np.nan  # FLAIR missing
    z[2, 4, 2, 0] = np.nan  # PET: voxels the image does not cover
    z[2, 1, 0, 3] = np.nan
    present = np.array([True, False, True])
    anomaly = np.abs(rng.normal(size=shape)).astype(np.float32)
    data = np.stack([rng.normal(size=shape), np.zeros(shape), rng.uniform(0.5, 1.5, size=shape)])
    score = SubjectScore(z=z, anomaly=anomaly, present=present, modalities=list(MODALITIES),
                         data=data.astype(np.float32), qc={}, grid=grid)
    atlas = Atlas(grid.to_image(labels), {1: "Left_Thalamus", 2: "Right_Thalamus", 7: "Cortex"},
                  name="tiny")
    return score, atlas, labels, mask


def test_region_table_matches_numpy_on_each_region(tiny_subject):
    score, atlas, labels, mask = tiny_subject
    offset = -0.75
    table = region_table(score, atlas, offset, mask=mask, global_percent=61.5)

    expected_columns = ["index", "name", "n_voxels", "anomaly_mean", "anomaly_p95"]
    for m in MODALITIES:
        expected_columns += [f"{m}_z_mean", f"{m}_z_p05", f"{m}_z_p95", f"{m}_frac_absz_gt2",
                             f"{m}_frac_z_lt_m2"]
    expected_columns += ["pet_focal_z_mean", "pet_global_cortical_percent"]
    assert list(table.columns) == expected_columns
    assert table["index"].tolist() == [1, 2, 7]
    assert table["name"].tolist() == ["Left_Thalamus", "Right_Thalamus", "Cortex"]

    for row in table.itertuples(index=False):
        region = (labels == row.index) & mask
        assert row.n_voxels == region.sum()
        a = score.anomaly[region].astype(np.float64)
        np.testing.assert_allclose(row.anomaly_mean, a.mean(), rtol=1e-6)
        np.testing.assert_allclose(row.anomaly_p95, np.percentile(a, 95), rtol=1e-6)
        for c, m in enumerate(MODALITIES):
            values = [getattr(row, f"{m}_z_mean"), getattr(row, f"{m}_z_p05"), getattr(row, f"{m}_z_p95"),
                      getattr(row, f"{m}_frac_absz_gt2"), getattr(row, f"{m}_frac_z_lt_m2")]
            if m == "FLAIR":
                assert np.isnan(values).all()  # missing modality: n/a, not 0
                continue
            z = score.z[c][region].astype(np.float64)
            z = z[np.isfinite(z)]  # uncovered voxels are left out
            np.testing.assert_allclose(values, [z.mean(), np.percentile(z, 5), np.percentile(z, 95),
                                                np.mean(np.abs(z) > 2), np.mean(z < -2)], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(row.pet_focal_z_mean, row.pet_z_mean - offset, rtol=1e-12)
        assert row.pet_global_cortical_percent == 61.5


def test_region_table_without_pet_and_empty_regions(tiny_subject):
    score, atlas, labels, mask = tiny_subject
    score.present[2] = False
    score.z[2] = np.nan
    table = region_table(score, atlas, None)
    assert table[[c for c in table.columns if c.startswith("pet_")]].isna().all().all()
    assert table["T1w_z_mean"].notna().all()
    # No mask: every atlas voxel counts. A region whose voxels are all NaN is n/a.
    assert table["n_voxels"].tolist() == [int((labels == i).sum()) for i in (1, 2, 7)]
    score.z[0][labels == 7] = np.nan
    table = region_table(score, atlas, None)
    assert np.isnan(table.loc[table["index"] == 7, "T1w_z_mean"]).all()
    assert table.loc[table["index"] == 7, "n_voxels"].item() == (labels == 7).sum()


def test_region_stats_percentiles_match_numpy_on_odd_sizes(rng):
    shape = (9, 7, 5)
    labels = rng.integers(0, 12, size=shape).astype(np.int32)
    labels[labels == 5] = 9170  # a large label value, as in AAL
    atlas = Atlas(nib.Nifti1Image(labels, np.eye(4)))
    values = rng.standard_t(3, size=shape).astype(np.float32)
    values[0, 0, :] = np.nan
    stats = RegionStats(atlas).summarise(values, percentiles=(0, 2.5, 50, 95, 100), threshold=1.0)
    for k, index in enumerate(atlas.labels["index"]):
        v = values[(labels == index) & np.isfinite(values)].astype(np.float64)
        got = [stats[name][k] for name in ("p00", "p2.5", "p50", "p95", "p100")]
        np.testing.assert_allclose(got, np.percentile(v, [0, 2.5, 50, 95, 100]), rtol=1e-6)
        assert stats["frac_above"][k] == pytest.approx(np.mean(v > 1.0))
        assert stats["frac_below"][k] == pytest.approx(np.mean(v < -1.0))
    with pytest.raises(AnomalyInputError, match="percentiles"):
        RegionStats(atlas).summarise(values, percentiles=(101,))


def test_round_table_keeps_five_significant_digits():
    table = pd.DataFrame({"index": [1, 2, 3], "name": ["a", "b", "c"],
                          "x": [1.23456789, -0.000123456789, np.nan], "n": [10, 20, 30]})
    out = round_table(table)
    assert out["x"].iloc[0] == 1.2346 and out["x"].iloc[1] == -0.00012346 and np.isnan(out["x"].iloc[2])
    assert out["n"].tolist() == [10, 20, 30] and out["index"].tolist() == [1, 2, 3]


# ------------------------------------------------------------------------ shards
def test_shards_cover_each_subject_exactly_once():
    jobs = [ScoreJob(f"s{i:02d}", {}) for i in range(11)]
    for n in range(1, 14):
        covered = [job.label for i in range(n) for job in shard_jobs(jobs, (i, n))]
        assert sorted(covered) == [job.label for job in jobs]  # each once, none lost
    assert shard_jobs(jobs, None) == jobs
    with pytest.raises(AnomalyInputError, match="shard"):
        shard_jobs(jobs, (3, 3))


@pytest.mark.parametrize("bad", ["2/2", "1/0", "-1/3", "a/b", "3"])
def test_bad_shard_is_refused(bad, tmp_path, capsys):
    status = main(["score", str(tmp_path), "--model", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--shard", bad])
    assert status == 2
    assert "--shard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def scored_cohort(sim_cohort, zscore_model_dir, tmp_path_factory):
    """The simulated patients scored in two shards into one folder (with figures).

    Returns the output folder and, per shard, the subject folders that shard wrote.
    """
    out = tmp_path_factory.mktemp("scores") / "derivatives-anomaly"
    written = []
    for shard in ("0/2", "1/2"):
        before = {p.name for p in out.glob("sub-*")}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # atlas regions lost at 4 mm
            code = main(["score", str(sim_cohort), "--model", str(zscore_model_dir), "--out", str(out),
                         "--shard", shard, "--quiet"])
        assert code == 0
        written.append({p.name for p in out.glob("sub-*")} - before)
    return out, written


def test_sharded_runs_score_each_patient_once(scored_cohort, sim_cohort):
    out, written = scored_cohort
    patients = {s.participant_id for s in find_subjects(sim_cohort, group="patient")}
    assert written[0] and written[1]
    assert not written[0] & written[1]
    assert written[0] | written[1] == patients


def test_output_names_follow_the_contract(scored_cohort):
    out, _ = scored_cohort
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert (out / "index.html").is_file()
    for folder in sorted(out.glob("sub-*")):
        sub = folder.name
        names = {p.name for p in folder.iterdir()}
        assert not [n for n in names if n.startswith(".")], "temporary files left behind"
        for m in MODALITIES:
            assert f"{sub}_{SPACE}_mod-{m}_stat-z_statmap.nii.gz" in names
        assert f"{sub}_{SPACE}_stat-anomaly_statmap.nii.gz" in names
        assert f"{sub}_{SPACE}_atlas-neuromorphometrics_regions.tsv" in names
        assert f"{sub}_report.html" in names
        assert f"{sub}_scores.json" in names
        assert any(re.fullmatch(rf"{sub}_.*_glassbrain\.png", n) for n in names)
        for name in names:  # every file belongs to its subject
            assert name.startswith(sub + "_")


def test_anomaly_maps_are_non_negative_in_mni_space(scored_cohort):
    out, _ = scored_cohort
    for path in out.glob(f"sub-*/*_{SPACE}_stat-anomaly_statmap.nii.gz"):
        img = nib.load(path)
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all() and data.min() >= 0 and data.max() > 0
        assert int(img.header["sform_code"]) == 4  # MNI


def test_index_links_every_subject_from_every_shard(scored_cohort):
    out, written = scored_cohort
    parser = Links()
    parser.feed((out / "index.html").read_text())
    linked = {Path(h).parent.name for h in parser.hrefs}
    assert linked == written[0] | written[1]
    for href in parser.hrefs:
        assert (out / href).is_file()


def test_written_tables_are_rounded_and_report_shows_global_and_focal(scored_cohort):
    out, _ = scored_cohort
    table = read_tsv_text(next(out.glob("sub-*/*_regions.tsv")))
    numbers = table.drop(columns=["index", "name", "n_voxels"]).to_numpy().ravel()
    digits = [len(re.sub(r"e.*$", "", v).replace("-", "").replace(".", "").lstrip("0")) for v in numbers]
    assert max(digits) <= 5
    report = next(out.glob("sub-*/sub-*_report.html")).read_text()
    assert "Global cortical metabolism" in report and "reference region: cerebellum" in report
    assert "pet focal z mean" in report


def test_global_cortical_pet_follows_simulated_metabolism(scored_cohort, sim_cohort):
    out, _ = scored_cohort
    truth = truth_table(sim_cohort)
    percent = {}
    for path in out.glob("sub-*/sub-*_scores.json"):
        values = json.loads(path.read_text())
        percent[values["participant_id"]] = values["global_cortical_pet_percent"]
        table = read_tsv(next(path.parent.glob("*_regions.tsv")))
        np.testing.assert_allclose(table["pet_global_cortical_percent"], values["global_cortical_pet_percent"],
                                   rtol=1e-4)
    ids = sorted(percent)
    measured = [percent[i] for i in ids]
    simulated = truth.loc[ids, "global_metabolism"].to_numpy()
    assert spearmanr(measured, simulated).statistic > 0.7
    lowest, highest = ids[int(np.argmin(simulated))], ids[int(np.argmax(simulated))]
    assert percent[lowest] < percent[highest]
    assert all(20 < p < 120 for p in measured)


def test_thalamic_lesion_ranks_a_thalamus_among_top_regions(scored_cohort, sim_cohort):
    out, _ = scored_cohort
    truth = truth_table(sim_cohort)
    thalamic = truth.index[truth["damage_thalamus"] > 0.5]
    assert len(thalamic), "the simulated cohort should have a patient with thalamic damage"
    for pid in thalamic:
        table = read_tsv(out / pid / f"{pid}_{SPACE}_atlas-neuromorphometrics_regions.tsv")
        top = table.sort_values("anomaly_mean", ascending=False).head(3)["name"]
        assert top.str.contains("Thalamus").any(), f"{pid}: top regions {list(top)}"


# --------------------------------------------------------- single subjects as files
def test_missing_pet_gives_na_columns_in_the_written_table(sim_cohort, zscore_model_dir, tmp_path):
    patient = find_subjects(sim_cohort, group="patient")[0]
    files = [str(patient.images["T1w"]), str(patient.images["FLAIR"])]  # no PET file
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["score", *files, "--model", str(zscore_model_dir), "--out", str(out), "--no-figures",
                     "--quiet"])
    assert code == 0
    folder = out / f"sub-{patient.label}"
    table = read_tsv_text(next(folder.glob("*_atlas-neuromorphometrics_regions.tsv")))
    pet = [c for c in table.columns if c.startswith("pet_")]
    assert pet and (table[pet] == "n/a").all().all()
    others = table.drop(columns=[*pet, "name"])
    assert not (others == "n/a").any().any()
    assert np.isfinite(others.astype(float).to_numpy()).all()
    values = json.loads((folder / f"sub-{patient.label}_scores.json").read_text())
    assert values["modalities_missing"] == ["pet"] and "global_cortical_pet_percent" not in values
    assert not list(folder.glob("*mod-pet*")) and not list(folder.glob("*.png"))
    assert (out / "index.html").is_file()  # listed even without a report


def small_bids(sim_cohort: Path, folder: Path, labels: list[str]) -> Path:
    """A BIDS dataset with some subjects of the shared cohort (copied, so it can change)."""
    folder.mkdir()
    for name in ("dataset_description.json", "participants.json"):
        if (sim_cohort / name).exists():
            shutil.copy(sim_cohort / name, folder / name)
    table = pd.read_csv(sim_cohort / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    table[table.participant_id.isin(labels)].to_csv(folder / "participants.tsv", sep="\t", index=False)
    for label in labels:
        shutil.copytree(sim_cohort / label, folder / label)
    return folder


def test_bids_subject_lacking_a_modality_several_atlases_and_groups(sim_cohort, zscore_model_dir, tmp_path):
    """`score BIDS --group all --atlas A B`: a patient without PET is scored from the rest;
    each atlas gets its table; --group picks the subjects."""
    bids = small_bids(sim_cohort, tmp_path / "bids", ["sub-hc001", "sub-pt001", "sub-pt002"])
    for pet in (bids / "sub-pt002").rglob("*_pet.nii*"):
        pet.unlink()
    runs = {"all": ["--atlas", "neuromorphometrics", "aal"], "control": [], "patient": []}
    for group, extra in runs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # atlas regions lost at 4 mm
            code = main(["score", str(bids), "--model", str(zscore_model_dir), "--out", str(tmp_path / group),
                         "--group", group, "--no-figures", "--quiet", *extra])
        assert code == 0
    scored = {g: sorted(p.name for p in (tmp_path / g).glob("sub-*")) for g in runs}
    assert scored == {"all": ["sub-hc001", "sub-pt001", "sub-pt002"], "control": ["sub-hc001"],
                      "patient": ["sub-pt001", "sub-pt002"]}
    out = tmp_path / "all"
    for sub in scored["all"]:
        for atlas in ("neuromorphometrics", "aal"):
            table = read_tsv_text(out / sub / f"{sub}_{SPACE}_atlas-{atlas}_regions.tsv")
            names = pd.read_csv(Path(__file__).resolve().parents[1] / "atlases" / f"atlas-{atlas}_dseg.tsv",
                                sep="\t")["name"]
            assert set(table["name"]) <= set(names) and len(table) > 0.8 * len(names)
        pet = [c for c in table.columns if c.startswith("pet_")]
        values = json.loads((out / sub / f"{sub}_scores.json").read_text())
        if sub == "sub-pt002":  # no PET: n/a in the PET columns, every other value scored
            assert values["modalities_missing"] == ["pet"] and (table[pet] == "n/a").all().all()
            assert not list((out / sub).glob("*mod-pet*"))
            assert (out / sub / f"{sub}_{SPACE}_mod-T1w_stat-z_statmap.nii.gz").is_file()
        else:
            assert values["modalities_missing"] == [] and not (table[pet] == "n/a").any().any()


def test_modality_option_for_files_without_bids_names(sim_cohort, zscore_model_dir, tmp_path):
    patient = find_subjects(sim_cohort, group="patient")[1]
    loose = tmp_path / "scans"
    loose.mkdir()
    shutil.copy(patient.images["T1w"], loose / "anat.nii.gz")
    shutil.copy(patient.images["pet"], loose / "fdg.nii.gz")
    out = loose / "results"  # next to loose files (not a BIDS dataset): allowed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["score", str(loose / "anat.nii.gz"), str(loose / "fdg.nii.gz"), "--modality", "t1w", "PET",
                     "--subject", "case7", "--age", "50", "--model", str(zscore_model_dir), "--out", str(out),
                     "--no-figures", "--quiet"])
    assert code == 0
    table = read_tsv(next((out / "sub-case7").glob("*_regions.tsv")))
    assert table["FLAIR_z_mean"].isna().all()
    assert table["T1w_z_mean"].notna().all() and table["pet_z_mean"].notna().all()
    assert json.loads((out / "sub-case7" / "sub-case7_scores.json").read_text())["age"] == 50


def test_file_inputs_without_modality_or_inside_their_dataset_are_refused(sim_cohort, zscore_model_dir,
                                                                          tmp_path, capsys):
    odd = tmp_path / "scan.nii.gz"
    odd.write_bytes(b"")
    assert main(["score", str(odd), "--model", str(zscore_model_dir), "--out", str(tmp_path / "o")]) == 2
    assert "--modality" in capsys.readouterr().err
    patient = find_subjects(sim_cohort, group="patient")[0]
    inside = sim_cohort / "scores"
    assert main(["score", str(patient.images["T1w"]), "--model", str(zscore_model_dir), "--out",
                 str(inside)]) == 2
    assert "inside the input dataset" in capsys.readouterr().err
    assert not inside.exists() and not (tmp_path / "o").exists()
    with pytest.raises(AnomalyInputError, match="letters and digits"):
        jobs_from_inputs([patient.images["T1w"]], subject="bad_label")


def test_bids_app_form_scores_the_chosen_participant(sim_cohort, zscore_model_dir, tmp_path):
    patients = find_subjects(sim_cohort, group="patient")
    out = tmp_path / "bids-app"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main([str(sim_cohort), str(out), "participant", "--participant_label", patients[2].label,
                     "--model", str(zscore_model_dir), "--no-figures", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.glob("sub-*")) == [patients[2].participant_id]
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"
    assert patients[2].participant_id in (out / "index.html").read_text()


def test_index_lists_subjects_written_by_others(tmp_path):
    """Each shard rebuilds index.html from every subject present in the folder."""
    for label, report in (("a1", True), ("b2", False)):
        folder = tmp_path / f"sub-{label}"
        folder.mkdir()
        (folder / f"sub-{label}_scores.json").write_text(json.dumps(
            {"participant_id": f"sub-{label}", "max_anomaly": 3.14159, "modalities_missing": ["pet"]}))
        if report:
            (folder / f"sub-{label}_report.html").write_text("<html></html>")
    (tmp_path / "sub-c3").mkdir()  # a subject still being written: no scores yet
    index = write_index(tmp_path).read_text()
    parser = Links()
    parser.feed(index)
    assert parser.hrefs == ["sub-a1/sub-a1_report.html"]
    assert "sub-b2" in index and "sub-c3" not in index and "3.14" in index
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------- figures
def test_glass_brain_renderer_draws_the_same_png(scored_cohort, tmp_path):
    from anomaly.report.figures import GlassBrainRenderer, plot_anomaly_glass_brain, plot_signed_glass_brain

    out, _ = scored_cohort
    anomaly = sorted(out.glob("sub-*/*_stat-anomaly_statmap.nii.gz"))[:2]
    pet = sorted(out.glob("sub-*/*_mod-pet_stat-z_statmap.nii.gz"))[:2]
    fast_a, fast_s = GlassBrainRenderer("anomaly"), GlassBrainRenderer("signed")
    for i, (a, z) in enumerate(zip(anomaly, pet)):  # the second drawing reuses the outline
        fast_a.plot(a, tmp_path / f"fa{i}.png", threshold=1.5, title="anomaly")
        fast_s.plot(z, tmp_path / f"fs{i}.png", title="pet z")
    plot_anomaly_glass_brain(anomaly[1], tmp_path / "pa.png", threshold=1.5, title="anomaly")
    plot_signed_glass_brain(pet[1], tmp_path / "ps.png", title="pet z")
    for fast, plain in (("fa1", "pa"), ("fs1", "ps")):
        a = np.asarray(Image.open(tmp_path / f"{fast}.png"))
        b = np.asarray(Image.open(tmp_path / f"{plain}.png"))
        assert a.shape == b.shape and np.array_equal(a, b)


def test_voxels_outside_the_pet_field_of_view_are_not_scored(sim_cohort, zscore_model_dir, tmp_path):
    """A PET cut above z = 20 mm: no PET z there, the regions up there are n/a for PET only."""
    from anomaly.normative import NormativeModel
    from anomaly.cli.scorer import Scorer

    patient = find_subjects(sim_cohort, group="patient")[3]
    img = nib.load(patient.images["pet"])
    data = np.asarray(img.dataobj, dtype=np.float32).copy()
    k = np.arange(data.shape[2])
    world_z = nib.affines.apply_affine(img.affine, np.c_[np.zeros_like(k), np.zeros_like(k), k])[:, 2]
    data[:, :, world_z > 20] = 0.0
    cut = tmp_path / f"sub-{patient.label}_pet.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), cut)
    model = NormativeModel.load(zscore_model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low PET coverage, atlas regions lost at 4 mm
        with Scorer(model) as scorer:
            result = scorer.score_subject(patient.label, {**patient.images, "pet": cut}, tmp_path / "out",
                                          figures=False)
    z = np.asarray(nib.load(result.files["z_pet"]).dataobj)
    ijk = np.indices(model.grid_.shape).reshape(3, -1).T
    height = nib.affines.apply_affine(model.grid_.affine, ijk)[:, 2].reshape(model.grid_.shape)
    assert np.isnan(z[model.mask_ & (height > 24)]).all()
    assert np.isfinite(z[model.mask_ & (height < 16)]).all()
    anomaly = np.asarray(nib.load(result.files["anomaly"]).dataobj)
    assert np.isfinite(anomaly).all() and anomaly.min() >= 0
    table = read_tsv(result.files["regions_neuromorphometrics"]).set_index("index")
    labels = scorer.atlases[0].label_array()
    above = [i for i in table.index if height[(labels == i) & model.mask_].min() > 24]
    below = [i for i in table.index if height[(labels == i) & model.mask_].max() < 16]
    assert above and below
    assert table.loc[above, "pet_z_mean"].isna().all() and table.loc[above, "T1w_z_mean"].notna().all()
    assert table.loc[below, "pet_z_mean"].notna().all()
    assert np.isfinite(result.values["global_cortical_pet_percent"])


def test_crs_model_prediction_goes_into_scores_and_report(sim_cohort, zscore_model_dir, tmp_path, monkeypatch):
    """--crs-model: the CRS package gets the written tables and subject values; the report shows it."""
    import anomaly.crs
    from anomaly.normative import NormativeModel
    from anomaly.cli.scorer import Scorer

    seen = {}

    def fake_predict(model, tables, *, global_values=None):
        seen.update(model=model, tables=tables, global_values=global_values)
        return {"crs_pred": 7.25, "crs_lower": 3.0, "crs_upper": 11.5, "interval_level": 0.9}

    monkeypatch.setattr(anomaly.crs, "predict_from_tables", fake_predict)
    patient = find_subjects(sim_cohort, group="patient")[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Scorer(NormativeModel.load(zscore_model_dir)) as scorer:
            result = scorer.score_subject(patient.label, patient.images, tmp_path, age=patient.age,
                                          crs_model="crs-model", figures=True)
    assert seen["model"] == "crs-model" and list(seen["tables"]) == ["neuromorphometrics"]
    written = read_tsv(result.files["regions_neuromorphometrics"])
    pd.testing.assert_frame_equal(seen["tables"]["neuromorphometrics"].reset_index(drop=True), written,
                                  check_dtype=False)  # the prediction sees what fit-crs/predict read
    assert seen["global_values"]["global_cortical_pet_percent"] == result.values["global_cortical_pet_percent"]
    assert json.loads(result.files["scores"].read_text())["crs"]["crs_pred"] == 7.25
    report = result.files["report"].read_text()
    assert "7.2" in report and "interval 3.0 to 11.5" in report


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resampling_onto_an_aligned_grid_is_an_exact_crop(order, rng):
    """Images already on the model's voxel lattice skip interpolation (speed), same values."""
    from scipy import ndimage

    from anomaly.preprocess.grid import _resample

    data = rng.normal(size=(23, 19, 17)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -18.0, -10.0]
    grid_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid_affine[:3, 3] = [-12.0, -26.0, -4.0]  # whole voxels away: source index = grid + (4, -4, 3)
    grid = Grid((16, 24, 12), grid_affine, 2.0)
    fast = _resample(data, affine, grid, order=order)
    matrix = np.linalg.solve(affine, grid.affine)
    slow = ndimage.affine_transform(data, matrix[:3, :3], offset=matrix[:3, 3], output_shape=grid.shape,
                                    order=order, mode="constant", cval=0.0, prefilter=order > 1,
                                    output=np.float32)
    if order > 1:
        np.clip(slow, min(float(data.min()), 0.0), max(float(data.max()), 0.0), out=slow)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(fast[:, 4:23], data[4:20, 0:19, 3:15])
    assert (fast[:, :4] == 0).all() and (fast[:, 23] == 0).all()  # outside the image: 0
