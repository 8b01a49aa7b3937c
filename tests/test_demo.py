"""`anomaly demo --quick`: every stage runs and the index links real outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from anomaly.cli.main import main

from conftest import pet_baseline_auroc


#: Margin over the model-free baseline (voxel AUROC). Measured over the patients' own brains:
#: baseline 0.847, default model 0.920 with the PET-led anomaly map (0.887 with the maximum
#: over modalities, the rule before it; ae 0.891, zscore 0.886 then); over the template's
#: mask, before the truth had the patients' brains, 0.793 and 0.874: the CSF that the
#: template's mask adds lowered the baseline most.
DETECTION_MARGIN = 0.05


def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    printed = capsys.readouterr().out
    for command in ("simulate", "fit-normative", "score", "fit-crs", "predict", "group"):
        assert f"$ anomaly {command} " in printed

    index = (out / "index.html").read_text()
    for link in ("scores/index.html", "crs_model/cv_metrics.tsv", "crs/predictions.tsv",
                 "group/group_correlations.tsv"):
        assert link in index and (out / link).is_file()

    # Five volumes per subject, as a coma team's session has them: the model uses each one.
    assert "5 volumes each (T1w, T2w, FLAIR, ADC, pet)" in index
    meta = json.loads((out / "normative_model" / "metadata.json").read_text())
    assert sorted(meta["modalities"]) == ["ADC", "FLAIR", "T1w", "T2w", "pet"]

    summary = json.loads((out / "demo_summary.json").read_text())
    assert [c["status"] for c in summary["commands"]] == [0] * 6
    # The normative model finds the simulated focal lesions better than no model at all.
    baseline = pet_baseline_auroc(out / "normative_model", out / "bids")
    assert baseline > 0.7, baseline  # the lesions are visible: the comparison means something
    assert summary["detection"]["focal_lesion_voxel_auroc"] > baseline + DETECTION_MARGIN

    predictions = pd.read_csv(out / "crs" / "predictions.tsv", sep="\t")
    assert len(predictions) == 16
    assert ((predictions["crs_lower"] <= predictions["crs_pred"])
            & (predictions["crs_pred"] <= predictions["crs_upper"])).all()
    # predict() clips to 0..23, so compare with the truth instead: the regressor, trained
    # on these patients, beats their mean CRS-R.
    truth = pd.read_csv(out / "bids" / "participants.tsv", sep="\t", na_values="n/a").set_index("participant_id")
    y = truth.loc[predictions["participant_id"], "crs"].to_numpy(float)
    assert np.abs(predictions["crs_pred"] - y).mean() < np.abs(y - y.mean()).mean()


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert (tmp_path / "keep.txt").read_text() == "user data"
