"""Tests of the input gate: image validation, BIDS datasets, atomic writes."""

from __future__ import annotations

import gzip
import json
import threading
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from anomaly import io
import anomaly.io.images  # noqa: F401 - monkeypatched below
import anomaly.io.writing  # noqa: F401
from anomaly.io import (
    AnomalyInputError,
    AnomalyModelError,
    Subject,
    atomic_path,
    check_output_dir,
    find_subjects,
    load_image,
    modality_from_path,
    read_participants,
    save_image,
    subject_from_path,
    write_bytes,
    write_json,
    write_text,
    write_tsv,
)

SHAPE = (9, 11, 7)
# 20 mm voxels from the corner of the MNI brain box: a tiny image in MNI space.
MNI_AFFINE = np.array(
    [[20.0, 0, 0, -90], [0, 20.0, 0, -126], [0, 0, 20.0, -72], [0, 0, 0, 1]]
)
INSIDE_BRAIN = (4, 6, 4)  # world (-10, -6, 8) mm
OUTSIDE_BRAIN = (0, 0, 0)  # world (-90, -126, -72) mm


def mni_image(rng: np.random.Generator, data: np.ndarray | None = None, affine=None):
    if data is None:
        data = rng.uniform(1.0, 2.0, SHAPE).astype(np.float32)
    return nib.Nifti1Image(data, MNI_AFFINE if affine is None else affine)


def check_error(excinfo: pytest.ExceptionInfo, name: str, problem: str) -> None:
    """An input error is one line that names the file and the problem."""
    message = str(excinfo.value)
    assert isinstance(excinfo.value, AnomalyInputError)
    assert "\n" not in message
    assert name in message, message
    assert problem in message, message


# ------------------------------------------------------------------ load_image


def _write_nifti(path: Path, img: nib.Nifti1Image) -> Path:
    nib.save(img, path)
    return path


def _header_only(path: Path, shape: tuple[int, ...]) -> Path:
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_sform(MNI_AFFINE, code=4)
    with open(path, "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * 4 + b"\0" * 64)  # extension flag and a few data bytes
    return path


def _truncated(path: Path, rng) -> Path:
    nib.save(mni_image(rng), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _singular(path: Path, rng) -> Path:
    # nibabel cannot write a singular qform; a singular sform alone is possible.
    img = nib.Nifti1Image(rng.uniform(1.0, 2.0, SHAPE).astype(np.float32), None)
    img.header.set_sform(np.diag([20.0, 20.0, 0.0, 1.0]), code=4)
    return _write_nifti(path, img)


def _with_voxel(rng, index, value):
    data = rng.uniform(1.0, 2.0, SHAPE).astype(np.float32)
    data[index] = value
    return mni_image(rng, data)


BAD_IMAGES = {
    "not found": ("missing.nii.gz", lambda p, rng: p, "file not found"),
    "folder": ("folder.nii.gz", lambda p, rng: (p.mkdir(), p)[1], "is a folder"),
    "empty": ("empty.nii.gz", lambda p, rng: (p.write_bytes(b""), p)[1], "file is empty"),
    "text": (
        "notes.txt",
        lambda p, rng: (p.write_text("hello\n"), p)[1],
        "not a readable NIfTI image",
    ),
    "random .nii": (
        "noise.nii",
        lambda p, rng: (p.write_bytes(rng.bytes(1000)), p)[1],
        "not a readable NIfTI image",
    ),
    "random .nii.gz": (
        "noise.nii.gz",
        lambda p, rng: (p.write_bytes(rng.bytes(1000)), p)[1],
        "not a readable NIfTI image",
    ),
    "truncated gzip": ("cut.nii.gz", _truncated, "truncated or corrupt"),
    "truncated .nii": ("cut.nii", _truncated, "truncated or corrupt"),
    "2D": (
        "flat.nii.gz",
        lambda p, rng: _write_nifti(p, nib.Nifti1Image(np.ones((9, 11), np.float32), np.eye(4))),
        "image is 2D",
    ),
    "single slice": (
        "slice.nii.gz",
        lambda p, rng: _write_nifti(p, mni_image(rng, rng.random((9, 11, 1)).astype(np.float32))),
        "single slice",
    ),
    "4D": (
        "sub-01_T1w.nii.gz",
        lambda p, rng: _write_nifti(p, mni_image(rng, rng.random((*SHAPE, 3)).astype(np.float32))),
        "image is 4D with 3 volumes; expected a 3D volume",
    ),
    "huge axis": ("huge.nii", lambda p, rng: _header_only(p, (4000, 10, 10)), "implausible size"),
    "huge volume": (
        "huge.nii",
        lambda p, rng: _header_only(p, (1024, 1024, 1024)),
        "implausible size",
    ),
    "singular affine": ("singular.nii.gz", _singular, "affine is singular"),
    "complex": (
        "complex.nii.gz",
        lambda p, rng: _write_nifti(
            p, mni_image(rng, (rng.random(SHAPE) + 1j).astype(np.complex64))
        ),
        "complex",
    ),
    "NaN inside brain": (
        "nan.nii.gz",
        lambda p, rng: _write_nifti(p, _with_voxel(rng, INSIDE_BRAIN, np.nan)),
        "NaN voxel(s) inside the MNI152 brain",
    ),
    "Inf": (
        "inf.nii.gz",
        lambda p, rng: _write_nifti(p, _with_voxel(rng, OUTSIDE_BRAIN, np.inf)),
        "infinite",
    ),
    "all zero": (
        "zero.nii.gz",
        lambda p, rng: _write_nifti(p, mni_image(rng, np.zeros(SHAPE, np.float32))),
        "image is constant",
    ),
    "all equal": (
        "equal.nii.gz",
        lambda p, rng: _write_nifti(p, mni_image(rng, np.full(SHAPE, 3.5, np.float32))),
        "image is constant",
    ),
    "scanner space": (
        "native.nii.gz",
        lambda p, rng: _write_nifti(p, mni_image(rng, affine=np.diag([1.0, 1.0, 1.0, 1.0]))),
        "does not overlap the MNI152 brain; register the image to MNI152 space first",
    ),
}


@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_load_image_refuses(case, tmp_path, rng):
    filename, make, problem = BAD_IMAGES[case]
    path = make(tmp_path / filename, rng)
    with pytest.raises(AnomalyInputError) as excinfo:
        load_image(path)
    check_error(excinfo, str(path), problem)


def test_load_image_refuses_non_finite_affine(rng):
    img = mni_image(rng)
    # nibabel refuses to build such an image, so poke the cached affine.
    img._affine = MNI_AFFINE.copy()
    img._affine[0, 3] = np.nan
    with pytest.raises(AnomalyInputError) as excinfo:
        load_image(img, name="bad_affine.nii")
    check_error(excinfo, "bad_affine.nii", "affine is not finite")


def test_load_image_refuses_other_objects():
    with pytest.raises(AnomalyInputError) as excinfo:
        load_image(np.zeros(SHAPE))
    check_error(excinfo, "img", "expected a path or a nibabel image")


def test_absurd_header_is_refused_before_reading(tmp_path, monkeypatch):
    path = _header_only(tmp_path / "huge.nii", (2000, 2000, 2000))
    monkeypatch.setattr(io.images, "_read_data", lambda *a: pytest.fail("data were read"))
    with pytest.raises(AnomalyInputError, match="implausible size"):
        load_image(path)


def test_load_image_returns_ras_float32(tmp_path, rng):
    img = mni_image(rng)
    path = _write_nifti(tmp_path / "sub-01_T1w.nii.gz", img)
    out = load_image(path)
    assert isinstance(out, nib.Nifti1Image)
    assert out.get_data_dtype() == np.float32
    assert out.shape == SHAPE
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    np.testing.assert_allclose(out.affine, MNI_AFFINE)
    np.testing.assert_allclose(np.asarray(out.dataobj), img.get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(out.header.get_sform(), out.affine)
    assert int(out.header["sform_code"]) > 0


def test_load_image_reorients_to_ras(rng):
    img = mni_image(rng)
    data = np.asarray(img.dataobj)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = SHAPE[0] - 1
    las = nib.Nifti1Image(data[::-1].copy(), MNI_AFFINE @ flip)
    assert nib.aff2axcodes(las.affine)[0] == "L"
    out = load_image(las)
    np.testing.assert_allclose(out.affine, MNI_AFFINE)
    np.testing.assert_array_equal(np.asarray(out.dataobj), data)


def test_load_image_squeezes_single_volume_4d(tmp_path, rng):
    data = rng.uniform(1.0, 2.0, (*SHAPE, 1)).astype(np.float32)
    path = _write_nifti(tmp_path / "one.nii.gz", mni_image(rng, data))
    out = load_image(path)
    assert out.shape == SHAPE
    np.testing.assert_array_equal(np.asarray(out.dataobj), data[..., 0])


def test_nan_outside_brain_warns_and_becomes_zero(tmp_path, rng):
    path = _write_nifti(tmp_path / "sub-01_pet.nii.gz", _with_voxel(rng, OUTSIDE_BRAIN, np.nan))
    expected = r"sub-01_pet\.nii\.gz: 1 NaN voxel\(s\) outside the brain"
    with pytest.warns(UserWarning, match=expected):
        out = load_image(path)
    data = np.asarray(out.dataobj)
    assert data[OUTSIDE_BRAIN] == 0.0
    assert np.isfinite(data).all()


def test_nan_without_mni_check_warns(rng):
    img = _with_voxel(rng, INSIDE_BRAIN, np.nan)
    with pytest.warns(UserWarning, match="NaN"):
        out = load_image(img, check_mni=False)
    assert np.asarray(out.dataobj)[INSIDE_BRAIN] == 0.0


def test_only_nan_is_refused(rng):
    with pytest.raises(AnomalyInputError, match="only NaN"):
        load_image(mni_image(rng, np.full(SHAPE, np.nan, np.float32)), name="x.nii")


def test_check_values_false_accepts_empty_masks(rng):
    mask = np.zeros(SHAPE, np.uint8)
    out = load_image(nib.Nifti1Image(mask, MNI_AFFINE), check_values=False)
    assert out.shape == SHAPE and not np.asarray(out.dataobj).any()
    with pytest.raises(AnomalyInputError, match="constant"):
        load_image(nib.Nifti1Image(mask, MNI_AFFINE))


def test_check_mni_false_accepts_any_field_of_view(rng):
    out = load_image(mni_image(rng, affine=np.eye(4)), check_mni=False)
    assert out.shape == SHAPE


def test_int16_with_scaling_gives_same_values(tmp_path, rng):
    raw = rng.integers(1, 1000, SHAPE).astype(np.int16)
    img = nib.Nifti1Image(raw, MNI_AFFINE)
    img.header.set_slope_inter(0.5, 10.0)
    path = _write_nifti(tmp_path / "scaled.nii.gz", img)
    assert nib.load(path).get_data_dtype() == np.int16
    out = load_image(path)
    np.testing.assert_allclose(np.asarray(out.dataobj), raw * 0.5 + 10.0, rtol=1e-6)
    assert out.get_data_dtype() == np.float32


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.uint16, np.float64, np.int8])
def test_numeric_dtypes_load_as_float32(tmp_path, rng, dtype):
    raw = rng.integers(1, 100, SHAPE).astype(dtype)
    img = nib.Nifti1Image(raw, MNI_AFFINE, dtype=dtype)
    path = _write_nifti(tmp_path / "typed.nii.gz", img)
    out = load_image(path)
    assert np.asarray(out.dataobj).dtype == np.float32
    np.testing.assert_array_equal(np.asarray(out.dataobj), raw.astype(np.float32))


def test_uncompressed_nii(tmp_path, rng):
    img = mni_image(rng)
    path = _write_nifti(tmp_path / "sub-01_T1w.nii", img)
    np.testing.assert_allclose(np.asarray(load_image(path).dataobj), img.get_fdata(), rtol=1e-6)


def test_name_is_used_in_messages(rng):
    with pytest.raises(AnomalyInputError) as excinfo:
        load_image(mni_image(rng, np.zeros(SHAPE, np.float32)), name="my scan")
    check_error(excinfo, "my scan", "constant")


def test_model_error_is_an_input_error():
    assert issubclass(AnomalyModelError, AnomalyInputError)
    assert issubclass(AnomalyInputError, ValueError)
    assert str(AnomalyInputError("a\nb   c")) == "a b c"


# ------------------------------------------------------------------ BIDS names


@pytest.mark.parametrize(
    ("path", "modality", "subject"),
    [
        ("sub-01_T1w.nii.gz", "T1w", "01"),
        ("/data/sub-02/anat/sub-02_ses-1_FLAIR.nii", "FLAIR", "02"),
        ("sub-03/pet/sub-03_ses-a_trc-FDG_pet.nii.gz", "pet", "03"),
        ("sub-04_acq-mprage_run-2_T2w.nii.gz", "T2w", "04"),
        ("sub-x/anat/brain.nii.gz", None, "x"),
        ("T1w.nii.gz", None, None),
        ("scan_T1w.nii.gz", None, None),
    ],
)
def test_bids_names(path, modality, subject):
    assert modality_from_path(path) == modality
    assert subject_from_path(path) == subject


# ---------------------------------------------------------------- participants

VALID_TSV = (
    "participant_id\tgroup\tage\tsex\tcrs\tcrs_sd\tsite\n"
    "sub-01\tcontrol\t34\tM\tn/a\tn/a\tA\n"
    "02\tpatient\t51.5\tF\t7\t1.5\tB\n"
    "sub-03\tpatient\tn/a\tmale\t12.0\t\tA\n"
)


def test_read_participants_valid(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text(VALID_TSV)
    table = read_participants(path)
    assert list(table["participant_id"]) == ["sub-01", "sub-02", "sub-03"]
    assert list(table["group"]) == ["control", "patient", "patient"]
    assert table["age"].dtype == float and np.isnan(table["age"][2])
    assert list(table["sex"]) == ["M", "F", "M"]
    assert str(table["crs"].dtype) == "Int64"
    assert pd.isna(table["crs"][0]) and list(table["crs"][1:]) == [7, 12]
    assert table["crs_sd"][1] == 1.5 and np.isnan(table["crs_sd"][2])
    assert list(table["site"]) == ["A", "B", "A"]


def test_read_participants_without_crs_columns(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tgroup\tage\tsex\nsub-01\tcontrol\t30\tF\n")
    table = read_participants(path)
    assert str(table["crs"].dtype) == "Int64" and pd.isna(table["crs"][0])
    assert np.isnan(table["crs_sd"][0])


def test_patient_without_crs_warns(tmp_path):
    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tgroup\tage\tsex\tcrs\nsub-01\tpatient\t30\tF\tn/a\n")
    with pytest.warns(UserWarning, match="sub-01"):
        table = read_participants(path)
    assert pd.isna(table["crs"][0])


HEADER = "participant_id\tgroup\tage\tsex\tcrs\tcrs_sd\n"


def rows(*cells: str) -> str:
    """participants.tsv text with HEADER and one row per space-separated string."""
    return HEADER + "".join("\t".join(row.split()) + "\n" for row in cells)


BAD_TSV = {
    "missing columns": (
        "participant_id\tgroup\nsub-01\tcontrol\n",
        "missing required column(s) age, sex",
    ),
    "comma separated": (
        "participant_id,group,age,sex\nsub-01,control,3,M\n",
        "missing required column",
    ),
    "duplicate": (
        rows("sub-01 control 30 M n/a n/a", "01 control 31 F n/a n/a"),
        "line 3 (sub-01): duplicate participant_id",
    ),
    "missing id": (rows("n/a control 30 M n/a n/a"), "line 2: participant_id is missing"),
    "crs not a number": (
        rows("sub-01 patient 30 M seven n/a"),
        "line 2 (sub-01): crs 'seven' is not a number",
    ),
    "crs out of range": (rows("sub-01 patient 30 M 24 n/a"), "crs '24' is out of range 0..23"),
    "crs negative": (rows("sub-01 patient 30 M -1 n/a"), "out of range"),
    "crs not integer": (rows("sub-01 patient 30 M 7.5 n/a"), "crs '7.5' is not an integer"),
    "bad group": (
        rows("sub-01 healthy 30 M n/a n/a"),
        "group 'healthy' is not one of control, patient",
    ),
    "bad sex": (rows("sub-01 control 30 X n/a n/a"), "sex 'X' is not M or F"),
    "age not a number": (
        rows("sub-01 control old M n/a n/a"),
        "age 'old' is not a non-negative number",
    ),
    "negative crs_sd": (
        rows("sub-01 patient 30 M 5 -1"),
        "crs_sd '-1' is not a non-negative number",
    ),
    "empty file": ("", "file is empty"),
}


@pytest.mark.parametrize("case", list(BAD_TSV))
def test_read_participants_refuses(case, tmp_path):
    text, problem = BAD_TSV[case]
    path = tmp_path / "participants.tsv"
    path.write_text(text)
    with pytest.raises(AnomalyInputError) as excinfo:
        read_participants(path)
    check_error(excinfo, str(path), problem)


def test_read_participants_missing_file(tmp_path):
    with pytest.raises(AnomalyInputError) as excinfo:
        read_participants(tmp_path / "participants.tsv")
    check_error(excinfo, "participants.tsv", "file not found")


# --------------------------------------------------------------- find_subjects


@pytest.fixture
def bids(tmp_path, rng) -> Path:
    """A tiny BIDS tree: sessions, PET, a duplicate run, a subject without images."""
    root = tmp_path / "bids"
    (root).mkdir()
    (root / "participants.tsv").write_text(
        "participant_id\tgroup\tage\tsex\tcrs\n"
        "sub-01\tcontrol\t30\tM\tn/a\n"
        "sub-02\tpatient\t40\tF\t5\n"
        "sub-03\tpatient\t50\tF\t9\n"
        "sub-04\tcontrol\t60\tM\tn/a\n"
    )
    img = mni_image(rng)
    files = [
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-01/anat/sub-01_FLAIR.nii",
        "sub-01/anat/.sub-01_T2w.nii.gz.123.abc.tmp.nii.gz",  # atomic-write leftover
        "sub-01/anat/sub-01_T1w.json",
        "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
        "sub-02/ses-1/pet/sub-02_ses-1_trc-FDG_pet.nii.gz",
        "sub-03/pet/sub-03_pet.nii.gz",
    ]
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".json"):
            path.write_text("{}")
        else:
            nib.save(img, path)
    (root / "sub-04" / "anat").mkdir(parents=True)
    return root


def test_find_subjects(bids):
    with pytest.warns(UserWarning) as record:
        subjects = find_subjects(bids)
    messages = " | ".join(str(w.message) for w in record)
    assert "sub-02: 2 T1w images, using ses-1/anat/sub-02_ses-1_T1w.nii.gz" in messages
    assert "sub-04" in messages  # skipped: no images
    assert [s.label for s in subjects] == ["01", "02", "03"]
    first, second, third = subjects
    assert isinstance(first, Subject)
    assert first.participant_id == "sub-01" and first.group == "control"
    assert first.crs is None and first.age == 30.0 and first.sex == "M"
    assert first.images == {
        "FLAIR": bids / "sub-01/anat/sub-01_FLAIR.nii",
        "T1w": bids / "sub-01/anat/sub-01_T1w.nii.gz",
    }
    assert second.crs == 5 and second.crs_sd is None
    assert second.images == {
        "T1w": bids / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
        "pet": bids / "sub-02/ses-1/pet/sub-02_ses-1_trc-FDG_pet.nii.gz",
    }
    assert third.images == {"pet": bids / "sub-03/pet/sub-03_pet.nii.gz"}


def test_find_subjects_filters(bids):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chosen = find_subjects(bids, participant_labels=["sub-03", "01"])
        patients = find_subjects(bids, group="patient")
    assert [s.label for s in chosen] == ["01", "03"]
    assert [s.label for s in patients] == ["02", "03"]


def test_find_subjects_unknown_label(bids):
    with pytest.raises(AnomalyInputError) as excinfo:
        find_subjects(bids, participant_labels=["01", "99", "sub-98"])
    check_error(excinfo, str(bids), "unknown participant label(s) 98, 99")


def test_find_subjects_requested_without_images(bids):
    with pytest.raises(AnomalyInputError) as excinfo:
        find_subjects(bids, participant_labels=["04"])
    check_error(excinfo, str(bids), "no image found for sub-04")


def test_find_subjects_without_participants_tsv(bids):
    (bids / "participants.tsv").unlink()
    with pytest.warns(UserWarning, match="no participants.tsv"):
        subjects = find_subjects(bids, participant_labels=["03"])
    assert subjects[0].group == "patient" and subjects[0].crs is None


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda root: None, "BIDS dataset folder not found"),
        (lambda root: root.write_text("x"), "is a file"),
        (lambda root: root.mkdir(), "no subject with images found"),
    ],
)
def test_find_subjects_refuses(tmp_path, setup, problem):
    root = tmp_path / "dataset"
    setup(root)
    with pytest.raises(AnomalyInputError) as excinfo:
        find_subjects(root)
    check_error(excinfo, str(root), problem)


def test_find_subjects_bad_group(bids):
    with pytest.raises(AnomalyInputError, match="group: 'healthy'"):
        find_subjects(bids, group="healthy")


# -------------------------------------------------------------- atomic writes


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "out" / "sub-01_map.nii.gz"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".sub-01_map.nii.gz.") and tmp.name.endswith(".tmp.nii.gz")
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_atomic_path_cleans_up_on_error(tmp_path):
    target = tmp_path / "table.tsv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.tsv"]


def test_save_image_roundtrip_and_gzip(tmp_path, rng):
    img = mni_image(rng)
    path = save_image(img, tmp_path / "img.nii.gz")
    with gzip.open(path) as handle:  # really gzip: the format follows the final name
        handle.read(10)
    np.testing.assert_array_equal(nib.load(path).get_fdata(), img.get_fdata())
    raw = save_image(img, tmp_path / "img.nii")
    assert raw.read_bytes()[344:348] == b"n+1\0"


def test_write_tsv_json_text_bytes(tmp_path):
    table = pd.DataFrame({"a": [1.5, np.nan], "b": pd.array([1, None], dtype="Int64")})
    write_tsv(table, tmp_path / "t.tsv")
    assert (tmp_path / "t.tsv").read_text() == "a\tb\n1.5\t1\nn/a\tn/a\n"
    obj = {"z": np.float32(0.5), "a": np.arange(2), "n": np.int64(3), "nan": float("nan"),
           "p": tmp_path, "na": pd.NA}
    write_json(obj, tmp_path / "x.json")
    loaded = json.loads((tmp_path / "x.json").read_text())
    assert loaded == {"z": 0.5, "a": [0, 1], "n": 3, "nan": None, "p": str(tmp_path), "na": None}
    assert list(loaded) == ["z", "a", "n", "nan", "p", "na"]  # order kept
    write_text("hé\n", tmp_path / "r.txt")
    assert (tmp_path / "r.txt").read_text(encoding="utf-8") == "hé\n"
    write_bytes(b"\x00\x01", tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_concurrent_writers_leave_a_complete_file(tmp_path):
    target = tmp_path / "shared.json"
    payloads = [{"writer": i, "data": list(range(2000))} for i in range(4)]
    errors: list[BaseException] = []

    def work(obj):
        try:
            for _ in range(5):
                write_json(obj, target)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert json.loads(target.read_text()) in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.json"]


# ------------------------------------------------------------- output folder


def test_check_output_dir_creates(tmp_path):
    out = check_output_dir(tmp_path / "a" / "b", inputs=[tmp_path / "bids"])
    assert out.is_dir() and out == (tmp_path / "a" / "b").resolve()
    assert list(out.iterdir()) == []  # the write probe is gone


@pytest.mark.parametrize(
    ("out", "problem"),
    [
        ("bids", "output folder is the input"),
        ("bids/sub-01", "inside the input dataset"),
        ("bids/derivatives", "inside the input dataset"),
        ("file.txt", "exists and is a file"),
    ],
)
def test_check_output_dir_refuses(tmp_path, out, problem):
    (tmp_path / "bids" / "sub-01").mkdir(parents=True)
    (tmp_path / "file.txt").write_text("x")
    out_dir = tmp_path / out
    with pytest.raises(AnomalyInputError) as excinfo:
        check_output_dir(out_dir, inputs=[tmp_path / "bids"])
    check_error(excinfo, str(out_dir), problem)


def test_check_output_dir_file_input_in_dataset(tmp_path):
    image = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"x")
    with pytest.raises(AnomalyInputError, match="inside the input dataset"):
        check_output_dir(tmp_path / "bids" / "scores", inputs=[image])
    assert check_output_dir(tmp_path / "bids" / "derivatives" / "anomaly", inputs=[image]).is_dir()
    assert check_output_dir(tmp_path / "scores", inputs=[image]).is_dir()


def test_check_output_dir_not_writable(tmp_path, monkeypatch):
    monkeypatch.setattr(io.writing.os, "access", lambda *a, **k: False)
    with pytest.raises(AnomalyInputError) as excinfo:
        check_output_dir(tmp_path / "out")
    check_error(excinfo, "out", "not writable")
