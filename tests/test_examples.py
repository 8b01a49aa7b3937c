"""The example scripts run in their quick mode and print sane results.

Each example runs in-process (``runpy.run_path(..., run_name="__main__")`` with
``sys.argv`` patched), as ``python examples/<name>.py --quick --out DIR`` would. The
expensive runs are module fixtures so that a later example can reuse an earlier one's
outputs, as a user would (04 reads the scores and CRS model of 03).
"""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?)"


def run_example(name: str, *args: str) -> str:
    """Run ``examples/<name>`` as a script with ``args``; return what it printed."""
    path = EXAMPLES / name
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [str(path), *args])
        mp.syspath_prepend(str(EXAMPLES))  # as `python examples/<name>` does (for _common)
        with contextlib.redirect_stdout(stdout):
            runpy.run_path(str(path), run_name="__main__")
    return stdout.getvalue()


def rows_after(text: str, heading: str) -> list[str]:
    """Non-empty lines of the table that follows the line starting with ``heading``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 2:]:  # skip the heading and the column names
        if not line.strip():
            break
        rows.append(line)
    return rows


@pytest.fixture(scope="module")
def ex01(tmp_path_factory):
    out = tmp_path_factory.mktemp("ex01")
    return out, run_example("01_simulate_and_fit.py", "--quick", "--out", str(out), "--device", "cpu")


@pytest.fixture(scope="module")
def ex03(tmp_path_factory):
    out = tmp_path_factory.mktemp("ex03")
    text = run_example("03_crs_regression.py", "--quick", "--out", str(out),
                       "--loss", "mse+rank", "--curriculum", "self-paced")
    return out, text


def test_01_simulate_and_fit(ex01):
    from anomaly.normative import NormativeModel

    out, text = ex01
    auroc = {m: float(v) for m, v in re.findall(rf"^(zscore|ae)\s+{NUMBER}\s+[0-9.]+$", text, re.M)}
    assert set(auroc) == {"zscore", "ae"}, text
    assert auroc["zscore"] > 0.6, text
    assert 0.0 <= auroc["ae"] <= 1.0
    for method in ("zscore", "ae"):
        model = NormativeModel.load(out / f"model-{method}")
        assert model.method == method and model.resolution == 4.0
    assert (out / "bids" / "participants.tsv").exists()
    assert f"outputs in {out}" in text


def test_02_score_one_patient(tmp_path):
    text = run_example("02_score_one_patient.py", "--quick", "--out", str(tmp_path))
    level = float(re.search(rf"global cortical PET level: {NUMBER}%", text).group(1))
    # The simulated patient keeps 45% of normal cortical metabolism.
    assert 20.0 < level < 90.0, text
    rows = rows_after(text, "10 most abnormal regions")
    assert len(rows) == 10, text
    assert any("Thalamus" in row for row in rows), "the simulated thalamic lesion is not among the top regions"
    for name in ("anomaly_glassbrain.png", "anomaly_slices.png", "regions.tsv"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "model-zscore" / "metadata.json").exists()
    table = pd.read_csv(tmp_path / "regions.tsv", sep="\t", na_values="n/a")
    assert {"name", "anomaly_mean", "pet_focal_z_mean"} <= set(table.columns)


def test_03_crs_regression(ex03):
    out, text = ex03
    assert "loss=mse+rank, curriculum=self-paced" in text
    mae = {m: float(v) for m, v in re.findall(rf"^(mil|ridge|mean)\s+{NUMBER} \[", text, re.M)}
    assert set(mae) == {"mil", "ridge", "mean"}, text
    assert all(0.0 <= v <= 23.0 for v in mae.values()), mae
    attention = rows_after(text, "Top-attention regions")
    assert len(attention) == 10, text
    values = [float(row.split()[1]) for row in attention]
    assert all(0.0 < v <= 1.0 for v in values) and values == sorted(values, reverse=True)
    metrics = pd.read_csv(out / "cv_metrics.tsv", sep="\t")
    assert set(metrics["model"]) == {"mil", "ridge", "mean"}
    assert (out / "crs_model" / "metadata.json").exists()
    assert len(list((out / "scores").glob("sub-pt*/sub-pt*_regions.tsv"))) == 20


def test_04_group_maps(ex03, tmp_path):
    src, _ = ex03
    text = run_example("04_group_maps.py", "--quick", "--out", str(tmp_path),
                       "--scores", str(src / "scores"), "--participants", str(src / "bids" / "participants.tsv"),
                       "--crs-model", str(src / "crs_model"))
    rows = rows_after(text, "Regions most correlated with the CRS-R")
    assert len(rows) == 10, text
    q = [float(row.split()[4]) for row in rows]
    assert all(0.0 <= v <= 1.0 for v in q), text
    # The simulated CRS-R depends on brainstem, thalamic... damage: some must show up.
    assert any(row.rstrip().endswith("yes") for row in rows), text
    group = tmp_path / "group"
    assert (group / "group_correlations.tsv").exists()
    pngs = {p.name for p in group.glob("*_glassbrain.png")}
    assert {"group_desc-crs0to7_stat-anomaly_glassbrain.png", "group_stat-attention_glassbrain.png",
            "group_feature-anomalymean_stat-rho_glassbrain.png"} <= pngs
    for name in pngs:
        assert f"{group / name}" in text


def test_plot_simulated_subjects(tmp_path):
    png = tmp_path / "subjects.png"
    text = run_example("plot_simulated_subjects.py", "--resolution", "4", "--out", str(png))
    assert png.stat().st_size > 0 and f"wrote {png}" in text


def test_shell_scripts_syntax():
    scripts = sorted(EXAMPLES.glob("*.sh"))
    if not scripts:
        pytest.skip("no shell scripts in examples/")
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    for script in scripts:
        result = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
