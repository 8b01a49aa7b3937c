"""`anomaly demo --quick`: every stage runs and the index links real outputs."""

from __future__ import annotations

import json

import pandas as pd

from anomaly.cli.main import main


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

    summary = json.loads((out / "demo_summary.json").read_text())
    assert [c["status"] for c in summary["commands"]] == [0] * 6
    # The autoencoder finds the simulated focal lesions well above chance.
    assert summary["detection"]["focal_lesion_voxel_auroc"] > 0.75

    predictions = pd.read_csv(out / "crs" / "predictions.tsv", sep="\t")
    assert len(predictions) == 16
    assert ((predictions["crs_lower"] <= predictions["crs_pred"])
            & (predictions["crs_pred"] <= predictions["crs_upper"])).all()
    assert predictions["crs_pred"].between(0, 23).all()


def test_demo_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    assert main(["demo", "--out", str(tmp_path), "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert (tmp_path / "keep.txt").read_text() == "user data"
