"""``anomaly prepare`` end to end on a native-space simulated patient (4 mm, seconds).

The native patient is sub-pt001 of the session cohort (same seed, same simulator), so
its MNI-space images in ``sim_cohort`` are the truth the prepared images must match.
"""

import json

import nibabel as nib
import numpy as np
import pytest

from anomaly.cli import main
from anomaly.io import find_subjects
from anomaly.preprocess import make_grid, resample_to_grid, template_images


@pytest.fixture(scope="module")
def native_bids(tmp_path_factory):
    """sub-pt001 of the session cohort, written in native space (with the native truth)."""
    out = tmp_path_factory.mktemp("native") / "bids"
    assert main(["simulate", str(out), "--healthy", "0", "--patients", "1", "--seed", "7", "--resolution", "4",
                 "--missing-fraction", "0", "--space", "native", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def scored(native_bids, zscore_model_dir, tmp_path_factory):
    """``score --prepare --native-maps`` on the native dataset: prepare (fast, 2 mm images,
    resampled to the 4 mm model grid by score) into OUT/prepared, then score."""
    out = tmp_path_factory.mktemp("scored") / "out"
    assert main(["score", str(native_bids), "--prepare", "--model", str(zscore_model_dir), "--out", str(out),
                 "--no-figures", "--quiet", "--native-maps"]) == 0
    return out


@pytest.fixture(scope="module")
def prepared(scored):
    """The prepared dataset that ``score --prepare`` wrote."""
    return scored / "prepared"


def _correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def test_prepared_dataset_is_bids_derivatives_read_unchanged(prepared):
    description = json.loads((prepared / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert (prepared / "participants.tsv").is_file()
    (subject,) = find_subjects(prepared)
    # The native brain mask and the transforms sit in anat/ too but are no modality.
    assert sorted(subject.images) == ["FLAIR", "T1w", "pet"]
    assert all("space-MNI152NLin2009cAsym_desc-preproc" in p.name for p in subject.images.values())
    folder = prepared / "sub-pt001"
    assert (folder / "anat" / "sub-pt001_from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5").is_file()
    assert (folder / "pet" / "sub-pt001_from-pet_to-T1w_mode-image_xfm.mat").is_file()
    assert (folder / "figures" / "sub-pt001_desc-registration_qc.png").stat().st_size > 1000
    qc = json.loads((folder / "sub-pt001_desc-prepare_qc.json").read_text())
    assert qc["t1w_template_correlation"] > 0.85


def test_rotated_anisotropic_t1w_and_pet_come_out_aligned(native_bids, prepared, sim_cohort):
    """Prepared T1w and PET match the same subject's MNI-space images; the native ones do not."""
    grid = make_grid(4.0)
    brain = template_images(grid)["mask"] > 0.5
    for modality, folder in (("T1w", "anat"), ("pet", "pet")):
        truth = resample_to_grid(sim_cohort / "sub-pt001" / folder / f"sub-pt001_{modality}.nii.gz", grid)
        (after,) = (prepared / "sub-pt001" / folder).glob(f"*desc-preproc_{modality}.nii.gz")
        before = native_bids / "sub-pt001" / folder / f"sub-pt001_{modality}.nii.gz"
        aligned = _correlation(resample_to_grid(after, grid), truth, brain)
        # The native image read as if it were in MNI space (what score did before).
        misaligned = _correlation(resample_to_grid(before, grid), truth, brain)
        assert aligned > 0.9, modality
        assert misaligned < 0.6, modality


def test_prepare_gives_the_same_images_every_run(native_bids, prepared, tmp_path):
    """Fixed ANTs seed and one ITK thread: a second run writes the same transforms and images
    (multi-threaded mutual information moved a PET by up to 0.6 degrees from run to run)."""
    again = tmp_path / "again"
    assert main(["prepare", str(native_bids), "--out", str(again), "--resolution", "4", "--quiet"]) == 0
    first = sorted(p.relative_to(prepared) for p in prepared.glob("sub-pt001/*/*") if p.suffix in (".gz", ".mat"))
    assert len(first) == 6  # T1w, FLAIR and PET in MNI space, the native brain mask, 2 rigid matrices
    for rel in first:
        if rel.suffix == ".mat":
            assert (again / rel).read_bytes() == (prepared / rel).read_bytes(), rel
        else:
            a, b = nib.load(prepared / rel), nib.load(again / rel)
            assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)), rel


def test_native_brain_mask_matches_truth(native_bids, prepared):
    truth = nib.load(native_bids / "derivatives" / "simulation" / "sub-pt001"
                     / "sub-pt001_space-T1w_desc-brain_mask.nii.gz")
    mask = nib.load(prepared / "sub-pt001" / "anat" / "sub-pt001_space-T1w_desc-brain_mask.nii.gz")
    assert mask.shape == truth.shape and np.allclose(mask.affine, truth.affine)
    a, b = np.asarray(mask.dataobj) > 0, np.asarray(truth.dataobj) > 0
    assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_prepare_resumes_and_shards(native_bids, prepared, capsys):
    qc = prepared / "sub-pt001" / "sub-pt001_desc-prepare_qc.json"
    stamp = qc.stat().st_mtime_ns
    assert main(["prepare", str(native_bids), "--out", str(prepared)]) == 0
    assert "1 subject(s) already done" in capsys.readouterr().out
    assert qc.stat().st_mtime_ns == stamp
    # Shard 1/2 of a one-subject dataset has nothing to do.
    assert main(["prepare", str(native_bids), "--out", str(prepared), "--shard", "1/2", "--quiet"]) == 0
    assert qc.stat().st_mtime_ns == stamp


def test_prepare_refuses_bad_input_with_one_line(native_bids, tmp_path, capsys):
    # Output inside the input dataset.
    assert main(["prepare", str(native_bids), "--out", str(native_bids / "prep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    # A subject without a T1w cannot be registered.
    bids = tmp_path / "nott1"
    (bids / "sub-01" / "pet").mkdir(parents=True)
    pet = nib.load(native_bids / "sub-pt001" / "pet" / "sub-pt001_pet.nii.gz")
    nib.save(pet, bids / "sub-01" / "pet" / "sub-01_pet.nii.gz")
    with pytest.warns(UserWarning, match="no participants.tsv"):
        status = main(["prepare", str(bids), "--out", str(tmp_path / "out")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no T1w image" in err


def test_misaligned_image_refused_by_score_and_prepared_one_scored(native_bids, scored, zscore_model_dir,
                                                                  tmp_path, capsys):
    native = sorted(str(p) for p in (native_bids / "sub-pt001").glob("*/*.nii.gz"))
    status = main(["score", *native, "--model", str(zscore_model_dir), "--out", str(tmp_path / "bad"),
                   "--no-figures", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "anomaly prepare" in err
    assert not (tmp_path / "bad" / "sub-pt001").exists()
    out = scored  # the same subject after prepare (score --prepare --native-maps)
    anomaly = next((out / "sub-pt001").glob("sub-pt001_*stat-anomaly_statmap.nii.gz"))
    (native_anomaly,) = (out / "sub-pt001").glob("sub-pt001_space-T1w_*stat-anomaly_statmap.nii.gz")
    t1w = nib.load(native_bids / "sub-pt001" / "anat" / "sub-pt001_T1w.nii.gz")
    back = nib.load(native_anomaly)
    assert back.shape == t1w.shape and np.allclose(back.affine, t1w.affine, atol=1e-4)
    # Most of the anomaly mass survives the trip back (same brain, finer grid).
    mni_total = np.nansum(np.asarray(nib.load(anomaly).dataobj)) * 4.0**3
    native_total = np.nansum(np.asarray(back.dataobj)) * abs(np.linalg.det(t1w.affine[:3, :3]))
    assert 0.6 < native_total / mni_total < 1.6


def test_native_maps_need_prepared_inputs(sim_cohort, zscore_model_dir, tmp_path, capsys):
    status = main(["score", str(sim_cohort), "--participant-label", "pt001", "--model", str(zscore_model_dir),
                   "--out", str(tmp_path / "o"), "--no-figures", "--quiet", "--native-maps"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "--native-maps needs inputs prepared" in err
    assert not (tmp_path / "o").exists()


def test_simulated_native_space_has_truth_in_both_spaces(native_bids):
    t1w = nib.load(native_bids / "sub-pt001" / "anat" / "sub-pt001_T1w.nii.gz")
    pet = nib.load(native_bids / "sub-pt001" / "pet" / "sub-pt001_pet.nii.gz")
    assert nib.aff2axcodes(t1w.affine) != ("R", "A", "S")
    zooms = t1w.header.get_zooms()
    assert zooms[2] / zooms[0] == pytest.approx(1.3, abs=1e-3)
    assert pet.header.get_zooms()[0] == pytest.approx(5.0)  # 2.5 mm at 2 mm, scaled to 4 mm
    truth = native_bids / "derivatives" / "simulation" / "sub-pt001"
    pose = json.loads((truth / "sub-pt001_native.json").read_text())
    assert 0.94 <= pose["head_scale"] <= 1.06
    for name in ("desc-lesion_mask", "space-T1w_desc-lesion_mask", "space-T1w_desc-brain_mask"):
        assert np.asarray(nib.load(truth / f"sub-pt001_{name}.nii.gz").dataobj).any(), name


def test_report_of_a_prepared_subject_shows_its_registration_figure(prepared, zscore_model_dir, tmp_path):
    out = tmp_path / "reports"
    assert main(["score", str(prepared), "--model", str(zscore_model_dir), "--out", str(out), "--quiet"]) == 0
    folder = out / "sub-pt001"
    figure = folder / "sub-pt001_desc-registration_qc.png"
    assert figure.read_bytes() == (prepared / "sub-pt001" / "figures" / figure.name).read_bytes()
    values = json.loads((folder / "sub-pt001_scores.json").read_text())
    assert values["registration_qc_figure"] == figure.name
    html = (folder / "sub-pt001_report.html").read_text()
    assert "Registration to MNI152" in html and html.count("data:image/png;base64,") >= 3


def test_fit_normative_prepare_registers_the_controls_first(tmp_path):
    bids = tmp_path / "native"
    # T1w and PET only: four registrations are the slowest part of the suite, and FLAIR's
    # coregistration adds nothing to what this test checks.
    assert main(["simulate", str(bids), "--healthy", "4", "--patients", "0", "--seed", "3", "--resolution", "4",
                 "--space", "native", "--modalities", "T1w", "pet", "--quiet"]) == 0
    model = tmp_path / "model"
    assert main(["fit-normative", str(bids), "--out", str(model), "--method", "zscore", "--resolution", "4",
                 "--prepare", "--quiet"]) == 0
    prepared = tmp_path / "model_prepared"
    assert len(list(prepared.glob("sub-*/sub-*_desc-prepare_qc.json"))) == 4
    meta = json.loads((model / "metadata.json").read_text())
    assert meta["data"]["n_controls"] == 4


def test_parser_registration_choices_are_the_registration_modes():
    from anomaly.cli.parser import REGISTRATION_MODES
    from anomaly.registration import MODES

    assert set(REGISTRATION_MODES) == set(MODES)
