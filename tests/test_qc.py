"""Quality control (anomaly.qc): a well-formed file that is the wrong thing is refused.

The wrong things are made from the session's 4 mm simulated cohort: a PET given as T1w,
an inverted T1w, a T1w moved out of MNI space, impossible ages, a control with a large
lesion, a patient whose PET reference region (cerebellum) is hypometabolic. Every
command runs in-process through ``anomaly.cli.main``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from anomaly.cli import main
from anomaly.io import AnomalyInputError, find_subjects, read_participants
from anomaly.normative import NormativeModel
from anomaly.qc import MetricRange, QCReference, check_alignment, image_metrics
from anomaly.qc.decide import judge_metric
from anomaly.qc.masks import qc_masks
from anomaly.qc.metrics import normalised_mutual_information


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def model(zscore_model_dir):
    return NormativeModel.load(zscore_model_dir)


@pytest.fixture(scope="module")
def patient(sim_cohort):
    return find_subjects(sim_cohort, group="patient")[0]


def _score(inputs, model_dir, out, *extra) -> int:
    return main(["score", *map(str, inputs), "--model", str(model_dir), "--out", str(out), "--no-figures",
                 "--quiet", *extra])


def _one_error_line(capfd) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("anomaly score: error: ")
    return err[0]


def _transformed(path: Path, out: Path, *, degrees: float = 15.0, shift_mm: float = 20.0,
                 scale: float = 0.94) -> Path:
    """The image resampled in a pose rotated about x, shifted along x and shrunk (still labelled MNI)."""
    from scipy import ndimage

    img = nib.load(path)
    theta = np.deg2rad(degrees)
    rotation = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    world = np.eye(4)
    world[:3, :3] = scale * rotation
    world[:3, 3] = [shift_mm, 0, 0]
    # output voxel -> world -> (inverse pose) -> input voxel
    matrix = np.linalg.inv(img.affine) @ np.linalg.inv(world) @ img.affine
    data = ndimage.affine_transform(img.get_fdata(dtype=np.float32), matrix[:3, :3], offset=matrix[:3, 3],
                                    order=1)
    nib.Nifti1Image(data.astype(np.float32), img.affine, img.header).to_filename(out)
    return out


def _copy_cohort(bids: Path, dest: Path, labels=None) -> Path:
    """A copy of the cohort (symbolic links to the subject folders) restricted to ``labels``."""
    dest.mkdir(parents=True)
    shutil.copy(bids / "dataset_description.json", dest)
    table = (bids / "participants.tsv").read_text().splitlines()
    keep = [row for row in table[1:] if labels is None or row.split("\t")[0] in labels]
    (dest / "participants.tsv").write_text("\n".join([table[0], *keep]) + "\n")
    for row in keep:
        (dest / row.split("\t")[0]).symlink_to(bids / row.split("\t")[0], target_is_directory=True)
    return dest


# --------------------------------------------------------------------------- metrics
def test_mutual_information_ignores_contrast_but_not_misalignment(rng):
    a = rng.normal(size=5000)
    assert normalised_mutual_information(a, a) == pytest.approx(2.0, abs=0.01)
    assert normalised_mutual_information(a, -3 * a + 1) == pytest.approx(2.0, abs=0.01)  # inverted contrast
    assert normalised_mutual_information(a, rng.permutation(a)) < 1.05  # no spatial correspondence


def test_image_metrics_of_the_control_mean_are_perfect(model):
    from anomaly.preprocess import template_images

    templates = template_images(model.grid_)
    c = model.modalities_.index("T1w")
    metrics = image_metrics(model.control_mean_[c], model.mask_, templates, model.control_mean_[c])
    assert metrics["similarity"] == pytest.approx(1.0)
    assert metrics["contrast"] < -0.5  # T1w: white matter brighter than grey matter
    assert metrics["coverage"] > 0.99


def _reference(low: float, median: float, high: float) -> QCReference:
    return QCReference(metrics={"T1w": {"alignment": MetricRange(median=median, scale=0.01, low=low, high=high,
                                                                 n=10)}})


@pytest.mark.parametrize("value, level", [(1.02, "refuse"), (1.045, "warn"), (1.16, None), (1.5, "refuse")])
def test_alignment_thresholds_are_retained_fractions(value, level):
    # Controls at 1.15-1.25, median 1.2: refuse below 1 + 0.18 * 0.2 = 1.036, warn below 1.05,
    # refuse above 1 + 2.0 * 0.2 = 1.4 (far more structure than any control).
    finding = judge_metric("T1w", "alignment", value, _reference(1.15, 1.2, 1.25))
    assert (finding.level if finding else None) == level
    if level == "refuse" and value < 1.2:
        assert "anomaly prepare" in finding.message and "1.15 to 1.25" in finding.message


@pytest.mark.parametrize("modality, value, level", [
    ("pet", -0.05, "warn"),  # the flattest severe coma seen: scored, with a warning
    ("pet", -0.5, "refuse"),  # reversed: a T1w given as PET, inverted intensities
    ("FLAIR", 0.1, "refuse"),  # an MRI without its contrast: a mislabelled modality
    ("FLAIR", 0.25, "warn")])
def test_flat_pet_contrast_warns_and_a_reversed_one_refuses(modality, value, level):
    # Controls' contrast 0.6-1.2, median 1.0: retained fractions equal the values.
    ref = QCReference(metrics={modality: {"contrast": MetricRange(median=1.0, scale=0.1, low=0.6, high=1.2, n=20)}})
    finding = judge_metric(modality, "contrast", value, ref)
    assert finding is not None and finding.level == level, finding


def test_a_value_as_typical_as_a_control_is_never_flagged():
    # One control as low as 1.02: the same value in a subject is not flagged.
    assert judge_metric("T1w", "alignment", 1.02, _reference(1.02, 1.2, 1.25)) is None


def test_the_model_folder_keeps_the_controls_distribution(model, zscore_model_dir):
    reference = model.qc_reference_
    assert set(reference.metrics) == set(model.modalities_)
    t1 = reference.range("T1w", "similarity")
    assert t1.n == 10 and 0.5 < t1.low <= t1.median <= t1.high < 1
    assert reference.age_range is not None and reference.age_range[0] < reference.age_range[1]
    assert QCReference.from_dict(reference.to_dict()).to_dict() == reference.to_dict()
    saved = json.loads((zscore_model_dir / "metadata.json").read_text())["qc"]
    assert saved["dropped_controls"] == {}


# --------------------------------------------------------------------------- refusals
def test_pet_given_as_t1w_is_refused_with_one_line(patient, zscore_model_dir, tmp_path, capfd):
    out = tmp_path / "out"
    status = _score([patient.images["pet"]], zscore_model_dir, out, "--modality", "T1w", "--subject", "x")
    line = _one_error_line(capfd)
    assert status == 2 and not out.exists()
    assert str(patient.images["pet"]) in line and "T1w" in line
    assert "outside the training controls' range" in line and "mislabelled modality" in line


def test_inverted_t1w_is_refused(patient, zscore_model_dir, tmp_path, capfd):
    img = nib.load(patient.images["T1w"])
    data = img.get_fdata(dtype=np.float32)
    inverted = tmp_path / "sub-x_T1w.nii.gz"
    nib.Nifti1Image(np.where(data > 0, data.max() - data, 0), img.affine, img.header).to_filename(inverted)
    status = _score([inverted], zscore_model_dir, tmp_path / "out")
    line = _one_error_line(capfd)
    assert status == 2 and "contrast" in line and str(inverted) in line


def test_misaligned_t1w_is_refused_and_told_to_run_prepare(patient, model, zscore_model_dir, tmp_path, capfd):
    moved = _transformed(patient.images["T1w"], tmp_path / "sub-x_T1w.nii.gz")
    status = _score([moved], zscore_model_dir, tmp_path / "out")
    line = _one_error_line(capfd)
    assert status == 2 and str(moved) in line
    assert "mutual information with the MNI template" in line and "anomaly prepare" in line
    # The content check alone, as anomaly.registration's tests use it.
    with pytest.raises(AnomalyInputError, match="anomaly prepare"):
        check_alignment(model.preprocess({"T1w": moved}), model.qc_reference_)
    aligned = check_alignment(model.preprocess({"T1w": patient.images["T1w"]}), model.qc_reference_)
    assert aligned["T1w"] > model.qc_reference_.range("T1w", "alignment").low - 0.05


def test_force_scores_a_refused_image_and_marks_it(patient, zscore_model_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="--force"):
        status = main(["score", str(patient.images["pet"]), "--modality", "T1w", "--subject", "x", "--model",
                       str(zscore_model_dir), "--out", str(out), "--quiet", "--force"])
    assert status == 0
    values = json.loads((out / "sub-x" / "sub-x_scores.json").read_text())
    assert values["qc"]["forced"] is True and values["qc"]["decision"] == "refuse"
    assert values["qc"]["T1w"]["decision"] == "refuse"
    report = (out / "sub-x" / "sub-x_report.html").read_text()
    assert 'id="qc-banner"' in report and "Scored with --force" in report


# --------------------------------------------------------------------------- covariates
@pytest.mark.parametrize("age", ["-5", "250"])
def test_impossible_age_on_the_command_line_is_refused(age, patient, zscore_model_dir, tmp_path, capfd):
    status = main(["score", str(patient.images["T1w"]), "--age", age, "--model", str(zscore_model_dir),
                   "--out", str(tmp_path / "out")])
    err = capfd.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "between 0 and 120" in err[0] and age in err[0]


@pytest.mark.parametrize("age", ["-5", "250"])
def test_impossible_age_in_participants_tsv_is_refused(age, tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text(f"participant_id\tgroup\tage\tsex\nsub-01\tpatient\t{age}\tM\n")
    with pytest.raises(AnomalyInputError, match=rf"participants.tsv.*line 2.*sub-01.*age '{age}' is outside 0-120"):
        read_participants(path)


def test_impossible_covariates_are_refused_by_the_library(patient, model):
    prep = model.preprocess(patient.images)
    with pytest.raises(AnomalyInputError, match="age 250"):
        model.quality_check(prep, age=250)
    with pytest.raises(AnomalyInputError, match="sex 'X' is not M or F"):
        model.quality_check(prep, sex="X")


def test_age_outside_the_controls_is_scored_with_a_warning(patient, model, zscore_model_dir, tmp_path):
    oldest = model.train_summary_["age_range"][1]  # the calibration controls: the age model's range
    out = tmp_path / "out"
    # The fixture model has 10 controls, hence no age term: the warning says so.
    assert model.covariates_ is False
    with pytest.warns(UserWarning, match="has no age term"):
        status = main(["score", str(patient.images["T1w"]), "--age", str(min(oldest + 10, 120)), "--subject", "x",
                       "--model", str(zscore_model_dir), "--out", str(out), "--quiet"])
    assert status == 0
    values = json.loads((out / "sub-x" / "sub-x_scores.json").read_text())
    assert values["qc"]["decision"] == "warn" and values["qc"]["forced"] is False
    assert any("outside the training controls' age range" in w for w in values["qc"]["warnings"])
    report = (out / "sub-x" / "sub-x_report.html").read_text()
    assert 'id="qc-banner"' in report and "Quality control warnings" in report and "no age term" in report


# --------------------------------------------------------------------------- PET reference
def test_hypometabolic_cerebellum_warns_and_reports_every_reference(patient, model, zscore_model_dir, tmp_path):
    img = nib.load(patient.images["pet"])
    data = img.get_fdata(dtype=np.float32)
    # Cerebellum of the model grid looked up at every PET voxel (nearest grid voxel).
    ijk = np.indices(data.shape).reshape(3, -1)
    world = img.affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    grid_ijk = np.rint(np.linalg.solve(model.grid_.affine, world)[:3]).astype(int)
    inside = np.all((grid_ijk >= 0) & (grid_ijk < np.array(model.grid_.shape)[:, None]), axis=0)
    cerebellum = np.zeros(ijk.shape[1], bool)
    cerebellum[inside] = qc_masks(model.grid_)["cerebellum"][tuple(grid_ijk[:, inside])]
    data[cerebellum.reshape(data.shape)] *= 0.6
    pet = tmp_path / "sub-x_pet.nii.gz"
    nib.Nifti1Image(data, img.affine, img.header).to_filename(pet)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="reference region cerebellum looks hypometabolic"):
        assert _score([pet], zscore_model_dir, out) == 0
    values = json.loads((out / "sub-x" / "sub-x_scores.json").read_text())
    levels = values["global_cortical_pet_percent_by_reference"]
    assert set(levels) == {"cerebellum", "brainstem", "global"}
    # Dividing by a 40% lower cerebellum inflates the cerebellum-referenced level.
    assert levels["cerebellum"] > 1.4 * levels["brainstem"]
    assert levels["cerebellum"] == pytest.approx(values["global_cortical_pet_percent"], abs=0.1)
    assert values["pet_reference_check"]["warning"] in values["qc"]["warnings"]


# --------------------------------------------------------------------------- training set
def _lesioned_controls(bids: Path, dest: Path) -> tuple[Path, str]:
    """The cohort's controls, the first with a 30 mm lesion (PET x 0.5, T1w x 0.6, FLAIR x 1.5)."""
    controls = find_subjects(bids, group="control")
    root = _copy_cohort(bids, dest, {f"sub-{c.label}" for c in controls[1:]})
    first = controls[0]
    rows = (bids / "participants.tsv").read_text().splitlines()
    with open(root / "participants.tsv", "a") as fh:
        fh.write(next(r for r in rows if r.startswith(f"sub-{first.label}\t")) + "\n")
    for modality, path in first.images.items():
        img = nib.load(path)
        data = img.get_fdata(dtype=np.float32)
        ijk = np.indices(data.shape).reshape(3, -1)
        world = (img.affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3].T.reshape(*data.shape, 3)
        lesion = (np.linalg.norm(world - np.array([-35.0, -20.0, 20.0]), axis=-1) < 30) & (data > 0)
        data[lesion] *= {"pet": 0.5, "T1w": 0.6}.get(modality, 1.5)  # FLAIR: hyperintense
        target = root / f"sub-{first.label}" / Path(path).parent.name / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.Nifti1Image(data, img.affine, img.header).to_filename(target)
    return root, first.label


def test_a_control_with_a_large_lesion_is_refused_or_dropped(sim_cohort, tmp_path, capfd):
    bids, label = _lesioned_controls(sim_cohort, tmp_path / "bids")
    args = ["fit-normative", str(bids), "--method", "zscore", "--resolution", "4", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"sub-{label}" in err[0] and "--drop-qc-outliers" in err[0]
    assert not (tmp_path / "refused").exists()
    assert main([*args, "--out", str(tmp_path / "model"), "--drop-qc-outliers"]) == 0
    assert f"dropped control (QC outlier): sub-{label}" in capfd.readouterr().out
    fitted = NormativeModel.load(tmp_path / "model")
    assert list(fitted.qc_dropped_) == [label] and fitted.train_summary_["n_controls"] == 9
    assert label not in fitted.qc_reference_.controls


# --------------------------------------------------------------------------- cohort QC
def test_qc_command_writes_the_table_and_page_and_refuses_only_the_wrong_image(sim_cohort, zscore_model_dir,
                                                                              tmp_path):
    bids = _copy_cohort(sim_cohort, tmp_path / "bids")
    bad = find_subjects(sim_cohort, group="patient")[1]
    (bids / f"sub-{bad.label}").unlink()
    shutil.copytree(sim_cohort / f"sub-{bad.label}", bids / f"sub-{bad.label}")
    shutil.copy(bad.images["pet"], bids / f"sub-{bad.label}" / "anat" / f"sub-{bad.label}_T1w.nii.gz")
    out = tmp_path / "qc"
    assert main(["qc", str(bids), "--model", str(zscore_model_dir), "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "qc.tsv", sep="\t")
    subjects = find_subjects(bids)
    assert len(table) == sum(len(s.images) for s in subjects)
    assert {"participant_id", "modality", "similarity", "alignment", "decision", "reason"} <= set(table.columns)
    refused = table[table["decision"] == "refuse"]
    assert list(zip(refused["participant_id"], refused["modality"])) == [(f"sub-{bad.label}", "T1w")]
    assert "grey/white matter contrast" in refused["reason"].iloc[0]
    pet = table[table["modality"] == "pet"]
    assert pet["pet_reference_ratio"].between(0.5, 3).all() and table.loc[table.modality != "pet",
                                                                          "pet_reference_ratio"].isna().all()
    # No false refusal: every other image of every control and simulated patient is scored.
    assert (table.drop(refused.index)["decision"] != "refuse").all()
    page = (out / "qc.html").read_text()
    assert page.count("<tr class=") == len(table) and 'class="refuse"' in page and f"sub-{bad.label}" in page


def test_a_model_without_qc_compares_with_nothing_and_says_so(zscore_model_dir, patient, tmp_path):
    folder = tmp_path / "old"
    shutil.copytree(zscore_model_dir, folder)
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["qc"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    old = NormativeModel.load(folder)
    assert old.qc_reference_ is None
    verdict = old.quality_check(old.preprocess({"T1w": patient.images["pet"]})).to_dict()
    assert verdict["decision"] == "pass" and verdict["compared"] is False and "nothing was compared" in verdict["note"]
