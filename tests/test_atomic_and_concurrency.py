"""Atomic outputs and concurrent runs of ``anomaly score`` (issue #7).

Every output goes through :func:`anomaly.io.atomic_path`: it is written to a hidden
temporary file (``.<name>.<pid>.<random>.tmp<ext>``) and renamed onto its final name
once complete. So a run killed with SIGKILL (no cleanup at all) may leave hidden
temporaries, but never a partial file under a final name, and two runs writing the same
files at the same time each leave complete files.

Interruption with SIGTERM/SIGINT and resuming is covered by
``tests/test_normative.py::test_sigterm_leaves_checkpoint_and_resume_matches_uninterrupted``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

PNG_END = b"IEND\xaeB`\x82"
REGION_COLUMNS = ["index", "name", "n_voxels", "anomaly_mean", "anomaly_p95"]
TIMEOUT = 240


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _score_argv(inputs: list[Path], model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "anomaly", "score", *map(str, inputs), "--model", str(model),
            "--out", str(out), "--device", "cpu", "--quiet"]


def visible_files(root: Path) -> list[Path]:
    """Files under their final names (not hidden, in no hidden folder)."""
    return sorted(p for p in root.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))


def hidden_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".*") if p.is_file())


def assert_complete(path: Path) -> None:
    """The file is whole: it parses completely as what its extension says."""
    name = path.name
    if name.endswith(".nii.gz"):
        img = nib.load(path)
        data = img.get_fdata()  # reads (and gunzips) every byte: fails on a partial file
        assert data.ndim == 3 and data.size > 0, path
    elif name.endswith(".tsv"):
        table = pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)
        assert list(table.columns[: len(REGION_COLUMNS)]) == REGION_COLUMNS, (path, list(table.columns))
        assert len(table) > 0 and table["index"].is_unique, path
    elif name.endswith(".json"):
        assert isinstance(json.loads(path.read_text()), dict), path
    elif name.endswith(".html"):
        text = path.read_text(encoding="utf-8")
        assert text.lstrip().lower().startswith("<!doctype html") and text.rstrip().endswith("</html>"), path
    elif name.endswith(".png"):
        raw = path.read_bytes()
        assert raw.startswith(b"\x89PNG\r\n\x1a\n") and raw.endswith(PNG_END), path
    else:
        pytest.fail(f"unexpected output file {path}")


# --------------------------------------------------------------------- SIGKILL
def test_sigkill_midway_leaves_no_partial_file(sim_cohort, zscore_model_dir, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_score_argv([sim_cohort], zscore_model_dir, out), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + TIMEOUT
        # Kill as soon as the first subject has a file: its other files are being written.
        while proc.poll() is None and time.time() < deadline and not (
                out.is_dir() and any(f.parent != out for f in visible_files(out))):
            time.sleep(0.01)
        assert proc.poll() is None, f"scoring ended before it could be killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    files = visible_files(out)
    assert files, "nothing was written before the kill"
    for path in files:
        assert_complete(path)
    # Leftovers (if any) are hidden temporaries of atomic_path or the writability probe.
    for path in hidden_files(out):
        assert ".tmp" in path.name or path.name.startswith(".anomaly-write-test"), path
    # Not every patient was scored: the kill did happen midway.
    n_patients = sum(1 for p in sim_cohort.glob("sub-pt*") if p.is_dir())
    assert len(list(out.glob("sub-*/sub-*_scores.json"))) < n_patients


# ----------------------------------------------------------------- concurrency
def test_two_processes_scoring_the_same_subject_into_one_folder(sim_cohort, zscore_model_dir, tmp_path):
    images = sorted((sim_cohort / "sub-pt002").glob("*/*.nii.gz"))
    assert len(images) == 3
    out = tmp_path / "out"
    argv = _score_argv(images, zscore_model_dir, out)
    procs = [subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=TIMEOUT) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-2000:]
        assert "Traceback" not in stderr

    files = visible_files(out)
    names = {p.relative_to(out).as_posix() for p in files}
    assert "dataset_description.json" in names and "index.html" in names
    subject = {n.split("/", 1)[1] for n in names if n.startswith("sub-pt002/")}
    stem = "sub-pt002_space-MNI152NLin2009cAsym"
    expected = {f"{stem}_mod-{m}_stat-z_statmap.nii.gz" for m in ("T1w", "FLAIR", "pet")} | {
        f"{stem}_stat-anomaly_statmap.nii.gz", f"{stem}_atlas-neuromorphometrics_regions.tsv",
        "sub-pt002_scores.json", "sub-pt002_report.html"}
    assert expected <= subject, sorted(expected - subject)
    for path in files:
        assert_complete(path)
    # Both runs ended normally: every temporary was renamed (or removed).
    assert hidden_files(out) == []
    # Both wrote the same (deterministic) result; what is left is one of them, whole.
    anomaly = nib.load(out / "sub-pt002" / f"{stem}_stat-anomaly_statmap.nii.gz").get_fdata()
    assert np.isfinite(anomaly).all() and anomaly.max() > 0


# ------------------------------------------------------------------ model folders
def _tensors_writer(values):
    from anomaly.io import save_tensors

    return lambda path: save_tensors({"x": np.asarray(values, np.float32)}, path)


def test_model_folder_is_staged_then_moved_into_place(tmp_path):
    from anomaly.io import read_model_folder, save_model_folder

    folder = tmp_path / "model"
    save_model_folder(folder, "normative", {"note": 1}, {"a.safetensors": _tensors_writer([1, 2])})
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left
    assert read_model_folder(folder, "normative").tensors("a.safetensors")["x"].tolist() == [1, 2]
    # Saving again updates in place and keeps the folder's other files (training log...).
    (folder / "training_log.csv").write_text("epoch\n1\n")
    save_model_folder(folder, "normative", {"note": 2}, {"a.safetensors": _tensors_writer([3])})
    assert sorted(p.name for p in folder.iterdir()) == ["a.safetensors", "metadata.json", "training_log.csv"]
    found = read_model_folder(folder, "normative")
    assert found.metadata["note"] == 2 and found.tensors("a.safetensors")["x"].tolist() == [3]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_failed_model_save_leaves_the_previous_model_or_nothing(tmp_path):
    from anomaly.io import read_model_folder, save_model_folder

    def broken(path: Path) -> None:
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model_folder(tmp_path / "new", "crs", {}, {"w.safetensors": broken})
    assert list(tmp_path.iterdir()) == []
    save_model_folder(tmp_path / "old", "crs", {"note": "old"}, {"w.safetensors": _tensors_writer([1])})
    with pytest.raises(OSError, match="disk full"):
        save_model_folder(tmp_path / "old", "crs", {"note": "new"}, {"w.safetensors": broken})
    assert read_model_folder(tmp_path / "old", "crs").metadata["note"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
