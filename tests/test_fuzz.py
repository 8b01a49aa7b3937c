"""Fuzzing of the input gate (issue #7): the NIfTI reader and the participants.tsv reader.

Property: for any input, :func:`anomaly.io.load_image` and
:func:`anomaly.io.read_participants` either return a valid result or raise
:class:`~anomaly.io.AnomalyInputError`; never another exception, a hang or a huge
allocation. Every run tries a fixed (derandomized) set of 150 inputs of each kind plus
``ANOMALY_FUZZ_EXAMPLES`` fresh random ones (default 200); the long run asks for 10,000::

    ANOMALY_FUZZ_EXAMPLES=10000 pytest tests/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import gzip
import io
import math
import os
import re
import signal
import struct
import time
import tracemalloc
import warnings
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anomaly.io import AnomalyInputError, load_image, read_participants

CI_EXAMPLES = 150
#: Fresh random inputs per run: small by default so that every run explores a little;
#: ANOMALY_FUZZ_EXAMPLES=10000 gives the long run.
LONG_EXAMPLES = int(os.environ.get("ANOMALY_FUZZ_EXAMPLES", "200"))
#: No single input may take longer than this (a hang), in seconds.
MAX_SECONDS = 20.0
#: Nor make the reader allocate more than this (the valid images are a few kB).
MAX_PEAK_BYTES = 256 * 2**20

CI = settings(max_examples=CI_EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
LONG = settings(max_examples=LONG_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    from anomaly.io.images import _mni_core_mask

    # Load (import nilearn, erode) the MNI mask for NaN placement once, before timing.
    _mni_core_mask()
    return tmp_path_factory.mktemp("fuzz")


# --------------------------------------------------------------------------- NIfTI
SHAPE = (9, 11, 7)
# 20 mm voxels from the corner of the MNI brain box: a tiny valid image in MNI space.
MNI_AFFINE = np.array([[20.0, 0, 0, -90], [0, 20.0, 0, -126], [0, 0, 20.0, -72], [0, 0, 0, 1]])


def _valid_nifti(dtype: str) -> bytes:
    """A small valid single-file NIfTI-1 (uncompressed bytes)."""
    rng = np.random.default_rng(0)
    data = rng.uniform(1.0, 200.0, SHAPE)
    img = nib.Nifti1Image(data.astype(dtype), MNI_AFFINE, dtype=dtype)
    img.header.set_qform(MNI_AFFINE, code=4)
    if dtype == "uint8":
        img.header.set_slope_inter(0.5, 3.0)
    return img.to_bytes()


BASES = {dtype: _valid_nifti(dtype) for dtype in ("float32", "int16", "uint8", "float64")}

# NIfTI-1 header fields (offset, little-endian struct format): the ones that decide the
# shape, type, scaling, position of the data and the affine.
FIELDS = {
    "sizeof_hdr": (0, "<i"), "dim_info": (39, "<B"), "intent_code": (68, "<h"),
    "datatype": (70, "<h"), "bitpix": (72, "<h"), "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"), "scl_inter": (116, "<f"), "xyzt_units": (123, "<B"),
    "qform_code": (252, "<h"), "sform_code": (254, "<h"), "magic": (344, "4s"),
    **{f"dim{i}": (40 + 2 * i, "<h") for i in range(8)},
    **{f"pixdim{i}": (76 + 4 * i, "<f") for i in range(8)},
    **{f"quatern_{q}": (256 + 4 * i, "<f") for i, q in enumerate("bcd")},
    **{f"qoffset_{q}": (268 + 4 * i, "<f") for i, q in enumerate("xyz")},
    **{f"srow_{row}{i}": (280 + 16 * r + 4 * i, "<f") for r, row in enumerate("xyz") for i in range(4)},
}

_INTS = {
    "<h": st.one_of(st.sampled_from([0, 1, -1, 2, 3, 4, 5, 7, 8, 16, 64, 128, 255, 256, 512, 768,
                                     1024, 1536, 2048, 2049, 4096, 30000, 32767, -32768]),
                    st.integers(-32768, 32767)),
    "<i": st.one_of(st.sampled_from([348, 540, 0, -1, 2**31 - 1]), st.integers(-2**31, 2**31 - 1)),
    "<B": st.integers(0, 255),
}
_FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 20.0, 352.0, 348.0, 1e-30, 1e30, 3.4e38,
                     -3.4e38, math.nan, math.inf, -math.inf, 2.0**31, 1e9]),
    st.floats(width=32),
)
_MAGIC = st.one_of(st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0"]), st.binary(min_size=4, max_size=4))


@st.composite
def field_edit(draw):
    name = draw(st.sampled_from(sorted(FIELDS)))
    offset, fmt = FIELDS[name]
    if fmt == "4s":
        value = draw(_MAGIC)
    elif fmt == "<f":
        value = draw(_FLOATS)
    else:
        value = draw(_INTS[fmt])
    return offset, fmt, value


@st.composite
def mutated_nifti(draw) -> tuple[str, bytes]:
    """(file name, bytes): a valid NIfTI with header edits, byte flips, truncation, gzip."""
    raw = bytearray(BASES[draw(st.sampled_from(sorted(BASES)))])
    for offset, fmt, value in draw(st.lists(field_edit(), max_size=4)):
        struct.pack_into(fmt, raw, offset, value)
    for position, xor in draw(st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)),
                                       max_size=4)):
        raw[position] ^= xor
    if draw(st.booleans()):
        raw = raw[: draw(st.integers(0, len(raw)))]
    data = bytes(raw)
    if not draw(st.booleans()):
        return "sub-01_T1w.nii", data
    packed = bytearray(gzip.compress(data, compresslevel=1))
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate":
        packed = packed[: draw(st.integers(0, len(packed)))]
    elif damage == "flip":
        packed[draw(st.integers(0, len(packed) - 1))] ^= draw(st.integers(1, 255))
    return "sub-01_T1w.nii.gz", bytes(packed)


def _problem(message: str, path: Path) -> str:
    """The kind of problem in an error message (for the statistics of a run)."""
    text = message.replace(str(path), "").lstrip(": ")
    text = re.sub(r"line \d+( \([^)]*\))?: ", "", text)
    return re.sub(r"[\d'\"(].*", "", text).strip()[:50]


@contextmanager
def time_limit(seconds: float):
    """Fail (instead of hanging) when the body runs longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _check_image_property(fuzz_dir: Path, name: str, content: bytes) -> str:
    """Check the property on one file; returns the outcome ("loaded" or the problem)."""
    path = fuzz_dir / name
    path.write_bytes(content)
    tracemalloc.reset_peak()
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), time_limit(MAX_SECONDS):
            warnings.simplefilter("ignore")
            img = load_image(path)
    except AnomalyInputError as exc:
        message = str(exc)
        assert message and "\n" not in message and str(path) in message, message
        outcome, img = f"refused: {_problem(message, path)}", None
    else:
        outcome = "loaded"
    # Any other exception propagates and fails the example.
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    assert elapsed < MAX_SECONDS, f"load_image took {elapsed:.1f} s"
    assert peak < MAX_PEAK_BYTES, f"load_image allocated {peak / 2**20:.0f} MiB for a {len(content)}-byte file"
    if img is not None:
        assert isinstance(img, nib.Nifti1Image)
        assert img.ndim == 3 and min(img.shape) >= 2
        data = np.asarray(img.dataobj)
        assert data.dtype == np.float32
        assert np.isfinite(data).all() and data.min() < data.max()
        assert np.isfinite(img.affine).all() and abs(np.linalg.det(img.affine[:3, :3])) > 0
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    return outcome


@pytest.fixture
def traced():
    tracemalloc.start()
    yield
    tracemalloc.stop()


def test_valid_bases_load(fuzz_dir, traced):
    for dtype, content in BASES.items():
        path = fuzz_dir / f"{dtype}.nii"
        path.write_bytes(content)
        assert load_image(path).shape == SHAPE
        assert _check_image_property(fuzz_dir, f"{dtype}.nii", content) == "loaded"


@CI
@given(case=mutated_nifti())
def test_fuzz_load_image(case, fuzz_dir, traced):
    event(_check_image_property(fuzz_dir, *case))


@LONG
@given(case=mutated_nifti())
def test_fuzz_load_image_long(case, fuzz_dir, traced):
    event(_check_image_property(fuzz_dir, *case))


# --------------------------------------------------------------- participants.tsv
COLUMNS = ["participant_id", "group", "age", "sex", "crs", "crs_sd"]
#: Plausible values per column, so that many generated tables are valid.
VALID = {
    "participant_id": st.one_of(st.from_regex(r"(sub-)?[A-Za-z0-9]{1,6}", fullmatch=True),
                                st.sampled_from(["sub-01", "01", " sub-02 "])),
    "group": st.sampled_from(["patient", "control", "Patient", "CONTROL"]),
    "age": st.one_of(st.integers(0, 110).map(str), st.sampled_from(["n/a", "", "34.5", "1e1", "0"])),
    "sex": st.sampled_from(["M", "F", "m", "female", "Male", "n/a", ""]),
    "crs": st.one_of(st.integers(0, 23).map(str), st.sampled_from(["n/a", "", "7.0", "23", "0"])),
    "crs_sd": st.sampled_from(["1.5", "0", "n/a", "", "2"]),
}
WEIRD = st.one_of(
    st.sampled_from(["", "n/a", "N/A", "NA", "nan", "NaN", "inf", "-inf", "1e400", "-0", "24", "-1",
                     "7.5", "0x10", "sub-", "sub-0_1", "sub-é", "٣", "²", "½", "\u00a0", "\ufeff",
                     "\x00", "X", '"quoted"', '"a\tb"', '"', "'", "\\", "#comment", "  ", "True", "None"]),
    st.text(max_size=12),
)
EXTRA_COLUMNS = st.sampled_from(["handedness", "", "participant_id", "age", "Unnamed: 0", "crs ", "\ufeffage"])


@st.composite
def participants_text(draw) -> bytes:
    """participants.tsv bytes: mostly plausible tables with a few odd columns, cells and
    lines (n/a, unicode, quotes, BOM, blank lines, ragged rows, CR/CRLF, other encodings)."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=300))
    layout = draw(st.sampled_from(["bids", "bids", "shuffled", "subset"]))
    if layout == "bids":
        columns = COLUMNS[: draw(st.integers(4, 6))]
    elif layout == "shuffled":
        columns = list(draw(st.permutations(COLUMNS)))
    else:
        columns = draw(st.lists(st.sampled_from(COLUMNS), unique=True, max_size=6))
    columns = columns + draw(st.lists(EXTRA_COLUMNS, max_size=1 if draw(st.booleans()) else 0))
    weirdness = draw(st.sampled_from([0, 0, 0.05, 0.2, 1.0]))  # share of odd cells
    lines = ["\t".join(columns)]
    for _ in range(draw(st.integers(0, 6))):
        cells = [draw(WEIRD) if draw(st.floats(0, 1)) < weirdness or c not in VALID else draw(VALID[c])
                 for c in columns]
        if draw(st.integers(0, 9)) == 0:  # ragged row
            cells = cells[:-1] if draw(st.booleans()) else cells + [draw(WEIRD)]
        lines.append("\t".join(cells))
        if draw(st.integers(0, 9)) == 0:
            lines.append(draw(st.sampled_from(["", "\t", " ", "\t\t\t"])))
    newline = draw(st.sampled_from(["\n", "\n", "\r\n", "\r"]))
    text = newline.join(lines) + draw(st.sampled_from(["", newline, newline * 3]))
    if draw(st.integers(0, 4)) == 0:
        text = "\ufeff" + text
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-16", "latin-1"]))
    return text.encode(encoding, errors="replace")


def _check_participants_property(fuzz_dir: Path, content: bytes) -> str:
    """Check the property on one file; returns the outcome ("read" or the problem)."""
    path = fuzz_dir / "participants.tsv"
    path.write_bytes(content)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(), time_limit(MAX_SECONDS):
            warnings.simplefilter("ignore")
            table = read_participants(path)
    except AnomalyInputError as exc:
        message = str(exc)
        assert message and "\n" not in message and str(path) in message, message
        return f"refused: {_problem(message, path)}"
    finally:
        assert time.perf_counter() - start < MAX_SECONDS
    assert list(table.columns[:6]) == COLUMNS
    ids = table["participant_id"].tolist()
    assert len(set(ids)) == len(ids)
    assert all(isinstance(i, str) and re.fullmatch(r"sub-[A-Za-z0-9]+", i) for i in ids), ids
    assert set(table["group"]) <= {"control", "patient"}
    assert table["age"].dtype == float and not (table["age"] < 0).any()
    assert np.isfinite(table["age"].dropna()).all()
    assert set(table["sex"].dropna()) <= {"M", "F"}
    assert str(table["crs"].dtype) == "Int64"
    crs = table["crs"].dropna()
    assert ((crs >= 0) & (crs <= 23)).all()
    assert table["crs_sd"].dtype == float and not (table["crs_sd"] < 0).any()
    return "read"


def test_participants_valid_example(fuzz_dir):
    content = "participant_id\tgroup\tage\tsex\tcrs\nsub-01\tpatient\t40\tM\t5\n01b\tcontrol\tn/a\tf\tn/a\n"
    assert _check_participants_property(fuzz_dir, content.encode()) == "read"
    table = read_participants(fuzz_dir / "participants.tsv")
    assert isinstance(table, pd.DataFrame)
    assert table["participant_id"].tolist() == ["sub-01", "sub-01b"]


@CI
@given(content=participants_text())
def test_fuzz_read_participants(content, fuzz_dir):
    event(_check_participants_property(fuzz_dir, content))


@LONG
@given(content=participants_text())
def test_fuzz_read_participants_long(content, fuzz_dir):
    event(_check_participants_property(fuzz_dir, content))


def test_fuzz_bytes_roundtrip_helper():
    """The mutation helpers keep to the header layout (sanity check of FIELDS)."""
    raw = bytearray(BASES["float32"])
    assert struct.unpack_from("<i", raw, 0)[0] == 348
    assert struct.unpack_from("4s", raw, 344)[0] == b"n+1\0"
    assert struct.unpack_from("<h", raw, FIELDS["datatype"][0])[0] == 16
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(raw)))
    assert header.get_data_shape() == SHAPE
