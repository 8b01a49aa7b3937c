"""Bad and unusual inputs through the command line (issue #7).

Every bad input must end the command with exit status 2 and ONE line on stderr that
names the file (or option) and the problem, without a traceback, and must leave no
file behind. Valid but unusual inputs (other orientations, voxel sizes, data types,
file formats) must work and give the same result as their plain twin.

The CLI runs in-process through ``main(argv)`` on a copy of one simulated subject
(the session fixture ``sim_cohort``) with the session z-score model.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from anomaly.cli.main import main

SUBJECT = "pt001"
T1W = f"sub-{SUBJECT}_T1w.nii.gz"
ANOMALY_MAP = f"sub-{SUBJECT}/sub-{SUBJECT}_space-MNI152NLin2009cAsym_stat-anomaly_statmap.nii.gz"
WEIGHTS = "weights.safetensors"
CALIBRATION = "calibration.safetensors"


# --------------------------------------------------------------------------- helpers
def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``anomaly`` in-process; returns (exit status, stdout, stderr).

    argparse-level errors leave through SystemExit (status 2 as well).
    """
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse: usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def error_lines(err: str) -> list[str]:
    """stderr lines that are not warnings (pytest records warnings in-process anyway)."""
    return [line for line in err.splitlines() if not line.startswith("anomaly: warning:")]


def tree(root: Path) -> set[str]:
    """Every path under ``root`` (hidden files included), relative."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Ctx:
    """What a case builder gets: a scratch folder and the shared inputs."""

    tmp: Path
    base: nib.Nifti1Image  # the plain T1w image of sub-pt001
    bids: Path  # the session cohort (read-only)
    model: Path  # the session z-score model (read-only)

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def inputs(self) -> Path:
        folder = self.tmp / "inputs"
        folder.mkdir(exist_ok=True)
        return folder

    def image(self, data=None, affine=None, name: str = T1W, header_edit=None, dtype=None) -> Path:
        """Save a variant of the base image under inputs/; returns its path."""
        data = np.asarray(self.base.dataobj) if data is None else data
        # nibabel wants int64 asked for explicitly (dtype=...).
        img = nib.Nifti1Image(data, self.base.affine if affine is None else affine, dtype=dtype)
        if header_edit is not None:
            header_edit(img)
        path = self.inputs() / name
        nib.save(img, path)
        return path

    def float_data(self) -> np.ndarray:
        return np.asarray(self.base.dataobj).astype(np.float32)

    def brain_voxel(self) -> tuple[int, int, int]:
        """Voxel index of MNI (0, -18, 18) mm: deep in the brain (thalamus level)."""
        ijk = np.linalg.inv(self.base.affine) @ np.array([0.0, -18.0, 18.0, 1.0])
        return tuple(int(round(v)) for v in ijk[:3])

    def model_copy(self, method: str | None = None) -> Path:
        """A writable copy of the z-score model; ``method="ae"`` makes it claim weights."""
        folder = self.tmp / "model"
        shutil.copytree(self.model, folder)
        if method is not None:
            meta = json.loads((folder / "metadata.json").read_text())
            meta["method"] = method
            meta["training"]["method"] = method
            (folder / "metadata.json").write_text(json.dumps(meta))
        return folder

    def bids_copy(self, participants: str | None = None) -> Path:
        """A one-patient BIDS dataset (sub-pt001) with an optional participants.tsv text."""
        root = self.tmp / "bids"
        shutil.copytree(self.bids / f"sub-{SUBJECT}", root / f"sub-{SUBJECT}")
        shutil.copy(self.bids / "dataset_description.json", root)
        if participants is not None:
            (root / "participants.tsv").write_text(participants)
        return root

    def score(self, *inputs, model: Path | None = None, out: Path | None = None, extra=()) -> list:
        return ["score", *inputs, "--model", model or self.model, "--out", out or self.out,
                "--quiet", "--no-figures", *extra]


def _set_meta(folder: Path, **changes) -> None:
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(changes)
    (folder / "metadata.json").write_text(json.dumps(meta))


def _record_hash(folder: Path, name: str) -> None:
    from anomaly.normative.modelio import sha256

    meta = json.loads((folder / "metadata.json").read_text())
    meta["files"][name] = sha256(folder / name)
    (folder / "metadata.json").write_text(json.dumps(meta))


def _gz_truncated(c: Ctx) -> Path:
    path = c.image()
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def _huge_header(c: Ctx, shape=(30000, 30000, 30000), name="sub-pt001_T1w.nii") -> Path:
    """A ~400-byte file whose header claims ``shape`` float32 voxels (108 TB for 30000^3)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_sform(c.base.affine, code=4)
    header.set_qform(c.base.affine, code=4)
    stream = io.BytesIO()
    header.write_to(stream)
    stream.write(b"\0" * 4 + b"\1" * 64)  # extension flag and a few data bytes
    raw = stream.getvalue()
    path = c.inputs() / name
    path.write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    return path


def _singular(c: Ctx) -> Path:
    # nibabel cannot write a singular qform; an image without affine keeps the header's sform.
    img = nib.Nifti1Image(np.asarray(c.base.dataobj), None)
    singular = c.base.affine.copy()
    singular[2, 2] = 0.0
    img.header.set_sform(singular, code=4)
    path = c.inputs() / T1W
    nib.save(img, path)
    assert np.linalg.det(nib.load(path).affine[:3, :3]) == 0
    return path


def _shifted(c: Ctx) -> Path:
    affine = c.base.affine.copy()
    affine[:3, 3] += 1000.0  # one metre away from the MNI brain
    return c.image(affine=affine)


def _with_value(c: Ctx, value, block: int = 1) -> Path:
    data = c.float_data()
    i, j, k = c.brain_voxel()
    data[i : i + block, j : j + block, k : k + block] = value
    return c.image(data=data)


def _text_file(c: Ctx) -> Path:
    path = c.inputs() / "notes.txt"
    path.write_text("participant_id\tgroup\nsub-01\tpatient\n")
    return path


def _float_atlas(c: Ctx) -> Path:
    data = np.where(c.float_data() > 0, 1.5, 0.0).astype(np.float32)
    return c.image(data=data, name="atlas-blurry_dseg.nii.gz")


def _pickle_bytes(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps(Payload())


# ----------------------------------------------------------------------- the cases
@dataclass
class Built:
    """A case, ready to run: argv, what the message must name, a file that must stay as is."""

    argv: list
    named: object
    keep: Path | None = None


#: case name -> (builder(ctx) -> Built, problem that the message must state)
CASES: dict = {}


def case(name: str, problem: str):
    def register(build):
        CASES[name] = (build, problem)
        return build

    return register


def _scored(c: Ctx, path: Path, *extra) -> Built:
    return Built(c.score(path, extra=extra), path)


def _file(path: Path, content: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


# --- image files --------------------------------------------------------------------
@case("missing path", "file not found")
def _(c):
    return _scored(c, c.tmp / T1W)


@case("folder among the input files", "is a folder")
def _(c):
    folder = c.inputs() / "sub-pt001_FLAIR.nii.gz"
    folder.mkdir()
    return Built(c.score(c.image(), folder), folder)


@case("empty file", "file is empty")
def _(c):
    return _scored(c, _file(c.inputs() / T1W, b""))


@case("truncated .nii.gz", "truncated or corrupt")
def _(c):
    return _scored(c, _gz_truncated(c))


@case("random bytes named .nii.gz", "not a readable NIfTI image")
def _(c):
    return _scored(c, _file(c.inputs() / T1W, np.random.default_rng(0).bytes(5000)))


@case("text file", "not a readable NIfTI image")
def _(c):
    return _scored(c, _text_file(c), "--modality", "T1w")


@case("text file without a BIDS name", "cannot tell the modality")
def _(c):
    return _scored(c, _text_file(c))


@case("2D image", "image is 2D")
def _(c):
    return _scored(c, c.image(data=c.float_data()[:, :, 20]))


@case("4D image with 3 volumes", "4D with 3 volumes")
def _(c):
    return _scored(c, c.image(data=np.stack([c.float_data()] * 3, axis=-1)))


@case("all-zero image", "image is constant")
def _(c):
    return _scored(c, c.image(data=np.zeros(c.base.shape, np.float32)))


@case("NaN inside the brain", "NaN voxel(s) inside the MNI152 brain")
def _(c):
    return _scored(c, _with_value(c, np.nan, block=3))


@case("Inf voxel", "infinite")
def _(c):
    return _scored(c, _with_value(c, np.inf))


@case("-Inf voxel", "infinite")
def _(c):
    return _scored(c, _with_value(c, -np.inf))


@case("header claims 30000^3 voxels", "implausible size")
def _(c):
    return _scored(c, _huge_header(c))


@case("header claims 2000^3 voxels", "implausible size")
def _(c):
    return _scored(c, _huge_header(c, (2000, 2000, 2000)))


@case("header claims 512x512x400 voxels in a tiny .nii.gz", "truncated or corrupt")
def _(c):
    return _scored(c, _huge_header(c, (512, 512, 400), name=T1W))  # 400 MiB: within the limits


@case("far outside MNI space", "does not overlap the MNI152 brain")
def _(c):
    return _scored(c, _shifted(c))


@case("singular affine", "affine is singular")
def _(c):
    return _scored(c, _singular(c))


@case("complex data", "complex")
def _(c):
    return _scored(c, c.image(data=c.float_data().astype(np.complex64)))


@case("modality the model lacks", "none of the model's modalities")
def _(c):
    return Built(c.score(c.image(name="sub-pt001_T2w.nii.gz")), "T2w")


@case("files of two subjects", "several subjects")
def _(c):
    return Built(c.score(c.image(), c.image(name="sub-pt002_FLAIR.nii.gz")), "pt002")


# --- participants.tsv and BIDS folders ----------------------------------------------------
PARTICIPANTS_HEADER = "participant_id\tgroup\tage\tsex\tcrs\n"


def _participants(rows: str, header: str = PARTICIPANTS_HEADER):
    def build(c):
        bids = c.bids_copy(header + rows)
        return Built(c.score(bids), bids / "participants.tsv")

    return build


case("participants.tsv missing columns", "missing required column(s) sex")(
    _participants("sub-pt001\tpatient\t54\n", header="participant_id\tgroup\tage\n"))
case("participants.tsv duplicate ids", "duplicate participant_id")(
    _participants("sub-pt001\tpatient\t54\tF\t5\npt001\tpatient\t55\tM\t4\n"))
case("participants.tsv crs 24", "out of range 0..23")(_participants("sub-pt001\tpatient\t54\tF\t24\n"))
case("participants.tsv crs -1", "out of range 0..23")(_participants("sub-pt001\tpatient\t54\tF\t-1\n"))
case("participants.tsv crs not a number", "is not a number")(
    _participants("sub-pt001\tpatient\t54\tF\tMCS+\n"))
case("participants.tsv crs not an integer", "is not an integer")(
    _participants("sub-pt001\tpatient\t54\tF\t7.5\n"))
case("participants.tsv row with an extra cell", "more tab-separated fields than the header")(
    _participants("sub-pt001\tpatient\t54\tF\t5\textra\n"))
case("participants.tsv bad group", "group 'coma' is not one of")(
    _participants("sub-pt001\tcoma\t54\tF\t5\n"))


def _fit(c, bids: Path) -> list:
    return ["fit-normative", bids, "--out", c.out, "--method", "zscore", "--resolution", "4", "--quiet"]


@case("fit-normative: participants.tsv missing columns", "missing required column(s) group, sex")
def _(c):
    bids = c.bids_copy("participant_id\tage\nsub-pt001\t54\n")
    return Built(_fit(c, bids), bids / "participants.tsv")


@case("fit-normative: no control", "no subject with images found in group 'control'")
def _(c):
    bids = c.bids_copy(PARTICIPANTS_HEADER + "sub-pt001\tpatient\t54\tF\t5\n")
    return Built(_fit(c, bids), bids)


@case("BIDS folder with no subjects", "no subject with images found")
def _(c):
    bids = c.tmp / "empty_bids"
    _file(bids / "dataset_description.json", '{"Name": "empty", "BIDSVersion": "1.9.0"}')
    return Built(c.score(bids), bids)


@case("unknown participant label", "unknown participant label(s) zz9")
def _(c):
    return Built(c.score(c.bids_copy(), extra=["--participant-label", "zz9"]), c.tmp / "bids")


# --- model folders ---------------------------------------------------------------------
def _model_case(c, model: Path, named: Path) -> Built:
    return Built(c.score(c.image(), model=model), named)


@case("model folder missing", "model folder not found")
def _(c):
    return _model_case(c, c.tmp / "nomodel", c.tmp / "nomodel")


@case("--model is a file", "expected a model folder")
def _(c):
    path = _file(c.tmp / "model.zip", b"PK\x03\x04")
    return _model_case(c, path, path)


@case("model without metadata.json", "missing; not an anomaly model folder")
def _(c):
    model = c.model_copy()
    (model / "metadata.json").unlink()
    return _model_case(c, model, model / "metadata.json")


@case("model metadata.json not JSON", "not valid JSON")
def _(c):
    model = c.model_copy()
    _file(model / "metadata.json", "{'format_version': 1")
    return _model_case(c, model, model / "metadata.json")


@case("model without calibration file", "missing from the model folder")
def _(c):
    model = c.model_copy()
    (model / CALIBRATION).unlink()
    return _model_case(c, model, model / CALIBRATION)


@case("AE model without weights file", "missing from the model folder")
def _(c):
    model = c.model_copy(method="ae")
    return _model_case(c, model, model / WEIGHTS)


@case("model from an incompatible version", "model format version 99 is not supported")
def _(c):
    model = c.model_copy()
    _set_meta(model, format_version=99)
    return _model_case(c, model, model / "metadata.json")


@case("calibration hash mismatch", "SHA-256 does not match")
def _(c):
    model = c.model_copy()
    raw = bytearray((model / CALIBRATION).read_bytes())
    raw[-1] ^= 0xFF
    _file(model / CALIBRATION, bytes(raw))
    return _model_case(c, model, model / CALIBRATION)


@case("weights hash mismatch", "SHA-256 does not match")
def _(c):
    model = c.model_copy(method="ae")
    _file(model / WEIGHTS, b"\0" * 64)
    return _model_case(c, model, model / WEIGHTS)


# --- output folder ---------------------------------------------------------------------
@case("--out is a file", "exists and is a file")
def _(c):
    path = _file(c.tmp / "out.txt", "keep me\n")
    return Built(c.score(c.image(), out=path), path, keep=path)


@case("--out under a regular file", "cannot create output folder")
def _(c):
    path = _file(c.tmp / "file.txt", "keep me\n")
    return Built(c.score(c.image(), out=path / "out"), path / "out", keep=path)


@case("--out inside the input dataset", "inside the input dataset")
def _(c):
    bids = c.bids_copy()
    return Built(c.score(bids, out=bids / "results"), bids / "results")


@case("--out inside the dataset of an input file", "inside the input dataset")
def _(c):
    bids = c.bids_copy()
    out = bids / f"sub-{SUBJECT}" / "out"
    return Built(c.score(bids / f"sub-{SUBJECT}" / "anat" / T1W, out=out), out)


@case("--out is the model folder", "is the input")
def _(c):
    model = c.model_copy()
    return Built(c.score(c.image(), model=model, out=model), model)


# --- atlases and options -------------------------------------------------------------------
@case("unknown atlas name", "unknown atlas")
def _(c):
    return Built(c.score(c.image(), extra=["--atlas", "harvardoxford"]), "harvardoxford")


@case("atlas with non-integer labels", "atlas labels must be whole numbers")
def _(c):
    atlas = _float_atlas(c)
    return Built(c.score(c.image(), extra=["--atlas", atlas]), atlas)


@case("atlas file missing", "atlas file not found")
def _(c):
    atlas = c.tmp / "atlas-mine_dseg.nii.gz"
    return Built(c.score(c.image(), extra=["--atlas", atlas]), atlas)


@case("--shard out of range", "expected 0 <= I < N")
def _(c):
    return Built(c.score(c.image(), extra=["--shard", "3/2"]), "--shard")


@case("--modality count mismatch", "got 2 modalities for 1 input files")
def _(c):
    return Built(c.score(c.image(), extra=["--modality", "T1w", "FLAIR"]), "--modality")


@pytest.fixture(scope="module")
def base_image(sim_cohort) -> nib.Nifti1Image:
    img = nib.load(sim_cohort / f"sub-{SUBJECT}" / "anat" / T1W)
    return nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)


@pytest.fixture
def ctx(tmp_path, base_image, sim_cohort, zscore_model_dir) -> Ctx:
    return Ctx(tmp=tmp_path, base=base_image, bids=sim_cohort, model=zscore_model_dir)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, ctx, capsys):
    build, problem = CASES[case]
    built = build(ctx)
    digest = sha(built.keep) if built.keep else None
    before = tree(ctx.tmp)

    rc, out, err = run_cli(built.argv, capsys)

    assert rc == 2, (out, err)
    assert "Traceback" not in err + out
    lines = error_lines(err)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"anomaly {built.argv[0]}: error: "), line
    assert str(built.named) in line, line
    assert problem in line, line
    # Nothing written anywhere: no output folder, no (temporary) file, inputs untouched.
    assert tree(ctx.tmp) == before, sorted(tree(ctx.tmp) ^ before)
    if built.keep:
        assert sha(built.keep) == digest, f"{built.keep} was modified"


@pytest.mark.parametrize("shape, name", [((30000,) * 3, "sub-pt001_T1w.nii"), ((512, 512, 400), T1W)],
                         ids=["30000^3 .nii", "512x512x400 .nii.gz"])
def test_enormous_header_is_refused_before_allocation(shape, name, ctx, capsys):
    """30000^3 float32 would be 108 TB, 512x512x400 is 400 MiB (within the size limits):
    a tiny file claiming either is refused before any big allocation."""
    path = _huge_header(ctx, shape, name)
    assert path.stat().st_size < 1024
    run_cli(ctx.score(ctx.image(name="sub-pt001_FLAIR.nii.gz")), capsys)  # warm caches
    shutil.rmtree(ctx.out, ignore_errors=True)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        rc, _, err = run_cli(ctx.score(path), capsys)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - start
    assert rc == 2 and ("implausible size" in err or "truncated or corrupt" in err), err
    assert peak < 512 * 2**20, f"peak allocation {peak / 2**20:.0f} MiB"
    assert elapsed < 30, elapsed


# ------------------------------------------------------------------ code execution
@pytest.mark.parametrize("target", [WEIGHTS, CALIBRATION])
@pytest.mark.parametrize("matching_hash", [False, True], ids=["hash-mismatch", "hash-matches"])
def test_pickle_payload_disguised_as_model_file_is_not_executed(target, matching_hash, ctx, capsys):
    marker = ctx.tmp / "pwned"
    model = ctx.model_copy(method="ae" if target == WEIGHTS else None)
    (model / target).write_bytes(_pickle_bytes(marker))
    if matching_hash:
        _record_hash(model, target)

    rc, out, err = run_cli(ctx.score(ctx.image(), model=model), capsys)

    assert not marker.exists(), "the pickle payload was executed"
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1 and str(model / target) in lines[0], err
    assert ("unreadable" if matching_hash else "SHA-256 does not match") in lines[0], lines[0]
    assert not ctx.out.exists()


# ------------------------------------------------------ valid but unusual inputs
def _anomaly(out: Path) -> np.ndarray:
    return np.asarray(nib.load(out / ANOMALY_MAP).get_fdata(), dtype=np.float64)


@pytest.fixture(scope="module")
def plain_result(sim_cohort, zscore_model_dir, base_image, tmp_path_factory) -> np.ndarray:
    """Anomaly map of the plain T1w (as simulated: int16, RAS, 4 mm isotropic, gzip)."""
    tmp = tmp_path_factory.mktemp("plain")
    path = tmp / "inputs" / T1W
    path.parent.mkdir()
    shutil.copy(sim_cohort / f"sub-{SUBJECT}" / "anat" / T1W, path)
    rc = main(["score", str(path), "--model", str(zscore_model_dir), "--out", str(tmp / "out"),
               "--quiet", "--no-figures"])
    assert rc == 0
    return _anomaly(tmp / "out")


def _las(c: Ctx) -> Path:
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    flip[0, 3] = c.base.shape[0] - 1
    return c.image(data=np.asarray(c.base.dataobj)[::-1], affine=c.base.affine @ flip)


def _scaled_int16(c: Ctx) -> Path:
    # Stored values * slope (0.5) are exactly the plain values: lossless.
    raw = (np.asarray(c.base.dataobj).astype(np.int32) * 2).astype(np.int16)

    def edit(img):
        img.header.set_slope_inter(0.5, 0.0)

    return c.image(data=raw, header_edit=edit)


def _scaled_uint8(c: Ctx) -> Path:
    # Quantised to 256 levels: lossy, so compared with a tolerance.
    values = np.asarray(c.base.dataobj).astype(np.float64)
    slope = values.max() / 255.0
    raw = np.round(values / slope).astype(np.uint8)

    def edit(img):
        img.header.set_slope_inter(slope, 0.0)

    return c.image(data=raw, header_edit=edit)


def _anisotropic(c: Ctx) -> Path:
    from nilearn.image import resample_img

    target = c.base.affine.copy()
    target[2, 2] = 6.0
    img = resample_img(nib.Nifti1Image(c.float_data(), c.base.affine), target_affine=target[:3, :3],
                       interpolation="continuous", force_resample=True, copy_header=True)
    path = c.inputs() / T1W
    nib.save(img, path)
    return path


def _big_endian(c: Ctx) -> Path:
    header = c.base.header.as_byteswapped(">")
    img = nib.Nifti1Image(np.asarray(c.base.dataobj).astype(">i2"), c.base.affine, header)
    path = c.inputs() / T1W
    nib.save(img, path)
    assert nib.load(path).header.endianness == ">"
    return path


def _spaces_and_unicode(c: Ctx) -> Path:
    folder = c.tmp / "my scans é"
    folder.mkdir()
    path = folder / T1W
    nib.save(nib.Nifti1Image(np.asarray(c.base.dataobj), c.base.affine), path)
    return path


def _nan_outside_brain(c: Ctx) -> Path:
    data = c.float_data()
    data[0, :, :] = np.nan  # SPM-style NaN background at the edge of the field of view
    return c.image(data=data)


# name -> (builder, comparison): "exact" (lossless), "close" (float rounding),
# or a minimal correlation of the anomaly maps (lossy variants).
UNUSUAL = {
    "LAS orientation": (_las, "exact"),
    ".nii uncompressed": (lambda c: c.image(name="sub-pt001_T1w.nii"), "exact"),
    "int64": (lambda c: c.image(data=np.asarray(c.base.dataobj).astype(np.int64), dtype=np.int64),
              "exact"),
    "float64": (lambda c: c.image(data=c.float_data().astype(np.float64)), "exact"),
    "big-endian int16": (_big_endian, "exact"),
    "4D with one volume": (lambda c: c.image(data=np.asarray(c.base.dataobj)[..., None]), "exact"),
    "path with spaces and unicode": (_spaces_and_unicode, "exact"),
    "int16 with scl_slope": (_scaled_int16, "close"),
    "uint8 with scl_slope": (_scaled_uint8, 0.99),
    "anisotropic 4x4x6 mm": (_anisotropic, 0.95),
    "NaN outside the brain": (_nan_outside_brain, 0.99),
}


@pytest.mark.parametrize("case", list(UNUSUAL))
def test_valid_unusual_input_matches_plain_twin(case, ctx, plain_result, capsys):
    build, expected = UNUSUAL[case]
    path = build(ctx)
    rc, out, err = run_cli(ctx.score(path), capsys)
    assert rc == 0, err
    assert error_lines(err) == [], err
    result = _anomaly(ctx.out)
    assert result.shape == plain_result.shape
    if expected == "exact":
        np.testing.assert_array_equal(result, plain_result)
    elif expected == "close":
        np.testing.assert_allclose(result, plain_result, rtol=1e-5, atol=1e-4)
    else:
        r = np.corrcoef(result.ravel(), plain_result.ravel())[0, 1]
        assert r > expected, f"correlation {r:.4f} with the plain twin"
