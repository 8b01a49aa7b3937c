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

import numpy as np
import pandas as pd
import pytest

from conftest import pet_baseline_auroc

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NUMBER = r"(-?[0-9]+(?:\.[0-9]+)?)"
#: Cross-validated MAE gain of the CRS-R regressor over the mean baseline (points);
#: measured 0.61 (mil 3.31, mean 3.91) in the quick example 03.
MAE_MARGIN = 0.3


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
    # A detector must beat the model-free baseline (negated PET SUVR) on the same cohort.
    # Measured: baseline 0.807, zscore 0.880, ae 0.898.
    baseline = pet_baseline_auroc(out / "model-zscore", out / "bids")
    for method in ("zscore", "ae"):
        assert auroc[method] > baseline + 0.05, (method, baseline, text)
    for method in ("zscore", "ae"):
        model = NormativeModel.load(out / f"model-{method}")
        assert model.method == method and model.resolution == 4.0
    assert (out / "bids" / "participants.tsv").exists()
    assert f"outputs in {out}" in text


def test_02_score_one_patient(tmp_path):
    text = run_example("02_score_one_patient.py", "--quick", "--out", str(tmp_path))
    level = float(re.search(rf"global cortical PET level: {NUMBER}%", text).group(1))
    # The simulated patient keeps 45% of normal cortical metabolism, just above the
    # report's 42% awareness line; measured 52.3% at 4 mm. The band lies wholly above the
    # line, so a level on the wrong side of it fails, and well below normal (100%).
    from anomaly.constants import AWARENESS_PERCENT

    assert AWARENESS_PERCENT == 42.0
    assert AWARENESS_PERCENT < level < 60.0, text
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
    mae = {m: float(v) for m, v in re.findall(rf"^(mil|ridge|hypothesis|mean)\s+{NUMBER} \[", text, re.M)}
    assert set(mae) == {"mil", "ridge", "hypothesis", "mean"}, text
    # Cross-validated MAE: the regressor beats the training-fold mean computed alongside.
    assert mae["mil"] < mae["mean"] - MAE_MARGIN, mae
    attention = rows_after(text, "Top-attention regions")
    assert len(attention) == 10, text
    values = [float(row.split()[1]) for row in attention]
    assert all(0.0 < v <= 1.0 for v in values) and values == sorted(values, reverse=True)
    metrics = pd.read_csv(out / "cv_metrics.tsv", sep="\t")
    assert set(metrics["model"]) == {"mil", "ridge", "hypothesis", "mean"}
    assert "Regressor minus each baseline" in text
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
    # q is Benjamini-Hochberg over every test in the table (printed to 3 digits).
    from anomaly.crs import benjamini_hochberg

    table = pd.read_csv(tmp_path / "group" / "group_correlations.tsv", sep="\t", na_values="n/a")
    table = table.dropna(subset=["p"]).assign(q_bh=lambda t: benjamini_hochberg(t["p"].to_numpy()))
    expected = table.sort_values("p")["q_bh"].head(10).to_numpy()
    assert np.allclose(q, expected, rtol=5e-3), (q, expected)
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
