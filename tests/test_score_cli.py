"""``anomaly score`` as a user sees it: inputs checked first, quiet and clear output, --jobs.

Every test runs the real command in-process (``anomaly.cli.main``) on the session's 4 mm
simulated cohort and fitted models, and reads stdout and stderr at the file-descriptor
level (``capfd``), so that a progress bar or warning written by any library would show.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anomaly.cli import main
from anomaly.cli.progress import SubjectLog
from anomaly.io import find_subjects

LOG_LINE = re.compile(r"^sub-[A-Za-z0-9]+ +\d+\.\d\d s  (ok|failed)$")


def _patients(bids: Path, n: int) -> list:
    return find_subjects(bids, group="patient")[:n]


def _copy_patients(bids: Path, dest: Path, n: int) -> tuple[Path, list[str]]:
    """A BIDS dataset with the first ``n`` patients of ``bids`` (files copied, not linked)."""
    patients = _patients(bids, n)
    dest.mkdir(parents=True)
    shutil.copy(bids / "dataset_description.json", dest)
    rows = (bids / "participants.tsv").read_text().splitlines()
    keep = {f"sub-{p.label}" for p in patients}
    (dest / "participants.tsv").write_text("\n".join([rows[0]] + [r for r in rows[1:]
                                                                   if r.split("\t")[0] in keep]) + "\n")
    for p in patients:
        shutil.copytree(bids / f"sub-{p.label}", dest / f"sub-{p.label}")
    return dest, [p.label for p in patients]


def _four_d(path: Path) -> None:
    nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)).to_filename(path)


# --------------------------------------------------------------------------- one bad input
@pytest.mark.parametrize("problem", ["corrupt", "4d", "outside_mni", "modality_not_in_model"])
def test_single_bad_input_is_exactly_one_stderr_line(problem, sim_cohort, zscore_model_dir, tmp_path, capfd,
                                                      recwarn):
    path = tmp_path / "sub-01_T1w.nii.gz"
    if problem == "modality_not_in_model":  # a good image, of a modality the model does not know
        path = tmp_path / "sub-01_T2w.nii.gz"
        shutil.copy(_patients(sim_cohort, 1)[0].images["T1w"], path)
    elif problem == "corrupt":
        path.write_bytes(b"not an image at all")
    elif problem == "4d":
        _four_d(path)
    else:  # a 3D brain-sized image with the default (scanner) affine
        nib.Nifti1Image(np.random.default_rng(0).random((40, 48, 40), np.float32), np.eye(4)).to_filename(path)
    out = tmp_path / "out"
    status = main(["score", str(path), "--model", str(zscore_model_dir), "--out", str(out)])
    captured = capfd.readouterr()
    assert status == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("anomaly score: error: ") and str(path) in lines[0]
    assert not out.exists()
    # pytest intercepts warnings before they reach stderr: none may have been issued.
    assert [str(w.message) for w in recwarn] == []


# --------------------------------------------------------------------------- batches
def test_batch_names_every_bad_subject_first_and_scores_the_rest(sim_cohort, zscore_model_dir, tmp_path, capfd,
                                                                recwarn):
    bids, labels = _copy_patients(sim_cohort, tmp_path / "bids", 4)
    (bids / f"sub-{labels[0]}" / "anat" / f"sub-{labels[0]}_T1w.nii.gz").write_bytes(b"\x1f\x8b broken")
    _four_d(bids / f"sub-{labels[2]}" / "anat" / f"sub-{labels[2]}_FLAIR.nii.gz")  # 4D: only PET may be
    out = tmp_path / "scores"
    status = main(["score", str(bids), "--model", str(zscore_model_dir), "--out", str(out), "--no-figures"])
    captured = capfd.readouterr()
    assert status == 2
    err = captured.err.splitlines()
    # Both bad subjects, named with their file, before anything else; then one log
    # line per scored subject (stderr is not a terminal here); no warning at all (the
    # atlas coverage is in the model, not repeated on every run).
    assert err[0].startswith(f"anomaly score: error: sub-{labels[0]}: ") and "_T1w.nii.gz" in err[0]
    assert err[1].startswith(f"anomaly score: error: sub-{labels[2]}: ") and "4D" in err[1]
    assert len(err) == 4, captured.err
    assert all(LOG_LINE.match(line) for line in err[2:]), err[2:]
    assert sorted(line.split()[0] for line in err[2:]) == [f"sub-{labels[1]}", f"sub-{labels[3]}"]
    for label in (labels[1], labels[3]):
        assert (out / f"sub-{label}" / f"sub-{label}_scores.json").exists()
    for label in (labels[0], labels[2]):
        assert not (out / f"sub-{label}").exists()
    assert "2 subject(s)" in captured.out
    assert not [str(w.message) for w in recwarn if "atlas" in str(w.message)]


def test_strict_refuses_the_batch_and_writes_nothing(sim_cohort, zscore_model_dir, tmp_path, capfd):
    bids, labels = _copy_patients(sim_cohort, tmp_path / "bids", 3)
    _four_d(bids / f"sub-{labels[1]}" / "anat" / f"sub-{labels[1]}_FLAIR.nii.gz")
    out = tmp_path / "scores"
    status = main(["score", str(bids), "--model", str(zscore_model_dir), "--out", str(out), "--strict"])
    captured = capfd.readouterr()
    assert status == 2
    assert not out.exists()
    err = captured.err.splitlines()
    assert err[0].startswith(f"anomaly score: error: sub-{labels[1]}: ")
    assert err[-1] == "anomaly score: error: --strict: 1 of 3 subject(s) have bad input; nothing was scored"
    assert captured.out == ""


# --------------------------------------------------------------------------- the log
def test_log_lines_off_a_terminal_and_quiet():
    stream = io.StringIO()
    with SubjectLog(["01", "patient7"], stream=stream) as subjects:
        subjects.done("01", 0.8412, "ok")
        subjects.error("patient7", "x.nii.gz: image is 4D")
        subjects.done("patient7", 12.3, "failed")
    assert stream.getvalue().splitlines() == [
        "sub-01         0.84 s  ok",
        "anomaly score: error: sub-patient7: x.nii.gz: image is 4D",
        "sub-patient7  12.30 s  failed"]
    assert all(LOG_LINE.match(line) for line in stream.getvalue().splitlines()[::2])
    quiet = io.StringIO()
    with SubjectLog(["01"], stream=quiet, enabled=False) as subjects:
        subjects.done("01", 1.0)
        subjects.error("01", "bad")
    assert quiet.getvalue() == "anomaly score: error: sub-01: bad\n"


def test_progress_bar_on_a_terminal():
    stream = io.StringIO()
    with SubjectLog(["01", "02"], stream=stream, terminal=True) as subjects:
        subjects.done("01", 0.5)
        subjects.done("02", 0.5)
    text = stream.getvalue()
    assert "2/2" in text and "sub-01" not in text


# --------------------------------------------------------------------------- coverage
def test_atlas_coverage_is_recorded_at_fit_and_reported(zscore_model_dir, sim_cohort, tmp_path):
    from anomaly.normative import NormativeModel

    meta = json.loads((zscore_model_dir / "metadata.json").read_text())
    coverage = meta["atlas_coverage"]["neuromorphometrics"]
    assert coverage["n_regions"] == 136
    assert coverage["n_kept"] + len(coverage["lost"]) == 136 and coverage["lost"]  # 4 mm loses small ones
    # A folder written before coverage was recorded still loads and gets the same numbers.
    old = tmp_path / "old-model"
    shutil.copytree(zscore_model_dir, old)
    del meta["atlas_coverage"]
    (old / "metadata.json").write_text(json.dumps(meta))
    assert NormativeModel.load(old).atlas_coverage_["neuromorphometrics"] == coverage
    # The scored subject's model description (the report's model card) says it.
    patient = _patients(sim_cohort, 1)[0]
    out = tmp_path / "scores"
    assert main(["score", str(sim_cohort), "--participant-label", patient.label, "--model",
                 str(zscore_model_dir), "--out", str(out), "--no-figures", "--quiet"]) == 0
    values = json.loads((out / f"sub-{patient.label}" / f"sub-{patient.label}_scores.json").read_text())
    text = values["model"]["atlas neuromorphometrics"]
    assert text.startswith(f"{coverage['n_kept']} of 136 regions on the 4 mm grid")
    assert coverage["lost"][0][1] in text


# --------------------------------------------------------------------------- --jobs
def test_jobs_2_writes_the_same_outputs_as_jobs_1(sim_cohort, ae_model_dir, tmp_path, capfd):
    labels = [p.label for p in _patients(sim_cohort, 3)]
    outs = {}
    for jobs in (1, 2):
        outs[jobs] = tmp_path / f"jobs{jobs}"
        assert main(["score", str(sim_cohort), "--participant-label", *labels, "--model", str(ae_model_dir),
                     "--out", str(outs[jobs]), "--no-figures", "--jobs", str(jobs)]) == 0
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 6 and all(LOG_LINE.match(line) for line in err), err
    files = sorted(p.relative_to(outs[1]) for p in outs[1].glob("sub-*/*"))
    assert files == sorted(p.relative_to(outs[2]) for p in outs[2].glob("sub-*/*"))
    assert len(files) == 3 * 6  # 3 z maps, the anomaly map, the region table, the scores
    for rel in files:
        a, b = outs[1] / rel, outs[2] / rel
        if rel.name.endswith(".nii.gz"):
            np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
        else:
            assert a.read_bytes() == b.read_bytes(), rel


def test_figures_drawn_by_the_helper_process_match_inline_figures(sim_cohort, zscore_model_dir, tmp_path):
    from anomaly.cli.score import FIGURE_HELPER_MIN_JOBS

    labels = [p.label for p in _patients(sim_cohort, FIGURE_HELPER_MIN_JOBS)]
    batch, alone = tmp_path / "batch", tmp_path / "alone"
    # A batch this size draws its figures in the helper process; one subject draws inline.
    assert main(["score", str(sim_cohort), "--participant-label", *labels, "--model", str(zscore_model_dir),
                 "--out", str(batch), "--quiet"]) == 0
    assert main(["score", str(sim_cohort), "--participant-label", labels[0], "--model", str(zscore_model_dir),
                 "--out", str(alone), "--quiet"]) == 0
    for label in labels:
        assert (batch / f"sub-{label}" / f"sub-{label}_report.html").exists()
    pngs = sorted((alone / f"sub-{labels[0]}").glob("*.png"))
    assert len(pngs) == 3  # anomaly and PET glass brains, peak slices
    for png in pngs:
        assert (batch / f"sub-{labels[0]}" / png.name).read_bytes() == png.read_bytes(), png.name
    assert f"sub-{labels[0]}_report.html" in (batch / "index.html").read_text()


def test_a_multi_frame_pet_is_scored_as_its_duration_weighted_mean(sim_cohort, zscore_model_dir, tmp_path):
    # A static FDG PET given as 3 frames (durations 60, 120, 120 s in its JSON sidecar)
    # gets exactly the maps of the weighted mean image given as one volume.
    import json

    bids, labels = _copy_patients(sim_cohort, tmp_path / "bids", 1)
    pet = bids / f"sub-{labels[0]}" / "pet" / f"sub-{labels[0]}_pet.nii.gz"
    img = nib.load(pet)
    data = np.asarray(img.dataobj, np.float32)
    frames = np.stack([data * 0.8, data * 1.1, data * 1.0], axis=-1)
    mean = np.tensordot(frames, np.array([0.2, 0.4, 0.4], np.float32), axes=([3], [0]))
    nib.Nifti1Image(mean.astype(np.float32), img.affine).to_filename(pet)
    assert main(["score", str(bids), "--model", str(zscore_model_dir), "--out", str(tmp_path / "single"),
                 "--no-figures", "--quiet"]) == 0
    nib.Nifti1Image(frames, img.affine).to_filename(pet)
    pet.with_name(pet.name.replace(".nii.gz", ".json")).write_text(json.dumps({"FrameDuration": [60, 120, 120]}))
    assert main(["score", str(bids), "--model", str(zscore_model_dir), "--out", str(tmp_path / "frames"),
                 "--no-figures", "--quiet"]) == 0
    name = f"sub-{labels[0]}/sub-{labels[0]}_space-MNI152NLin2009cAsym_stat-anomaly_statmap.nii.gz"
    single = nib.load(tmp_path / "single" / name).get_fdata()
    averaged = nib.load(tmp_path / "frames" / name).get_fdata()
    np.testing.assert_allclose(averaged, single, atol=1e-4)
    assert single.max() > 0
