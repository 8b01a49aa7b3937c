"""fit_crs / predict_crs / group_analysis end to end on a tiny synthetic SCORES_DIR."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from anomaly.cli.crs import fit_crs, group_analysis, predict_crs
from anomaly.crs import load_crs_model
from anomaly.crs.synthetic import simulate_region_bags, write_scores_dir
from anomaly.io import AnomalyInputError

SPACE = "space-MNI152NLin2009cAsym"
NAMES = ["Brain_Stem", "Left_Thalamus_Proper", "Right_Thalamus_Proper", "Left_PCu_precuneus", "Left_Occipital"]


def tiny_atlas(folder):
    """Five block regions on an 8 mm MNI grid, as a user atlas (NIfTI + dseg.tsv)."""
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = [-80, -116, -72]
    labels = np.zeros((20, 24, 20), np.int16)
    labels[8:12, 11:14, 4:8] = 1
    labels[6:10, 12:15, 9:11] = 2
    labels[10:14, 12:15, 9:11] = 3
    labels[7:10, 4:8, 12:15] = 4
    labels[10:14, 2:6, 9:13] = 5
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "atlas-tiny_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), path)
    pd.DataFrame({"index": range(1, 6), "name": NAMES}).to_csv(folder / "atlas-tiny_dseg.tsv", sep="\t", index=False)
    return path, labels, affine


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("crs_e2e")
    atlas_path, labels, affine = tiny_atlas(root / "atlas")
    cohort = simulate_region_bags(12, n_regions=5, seed=3)
    cohort.bags.region_index = np.arange(1, 6)
    cohort.bags.region_names = list(NAMES)
    cohort.bags.atlas = "tiny"
    scores = write_scores_dir(cohort, root / "scores")
    rng = np.random.default_rng(0)
    j = cohort.bags.feature_names.index("anomaly_mean")
    for i, pid in enumerate(cohort.bags.participant_ids):
        values = np.nan_to_num(cohort.bags.features[i, :, j])
        data = np.zeros(labels.shape, np.float32)
        for r in range(5):
            data[labels == r + 1] = values[r]
        data += np.abs(rng.normal(0, 0.05, data.shape)).astype(np.float32) * (labels > 0)
        nib.save(nib.Nifti1Image(data, affine), scores / pid / f"{pid}_{SPACE}_stat-anomaly_statmap.nii.gz")
    parts = cohort.participants
    extra = pd.DataFrame({"participant_id": ["sub-c01", "sub-p099"], "group": ["control", "patient"],
                          "age": [30.0, 40.0], "sex": ["M", "F"], "crs": pd.array([pd.NA, 5], dtype="Int64"),
                          "crs_sd": [np.nan, np.nan]})
    parts = pd.concat([parts, extra], ignore_index=True)
    participants = root / "participants.tsv"
    parts.to_csv(participants, sep="\t", index=False, na_rep="n/a")
    model_dir = root / "crs_model"
    metrics = fit_crs(scores, participants, model_dir, cv="kfold:3", n_seeds=2, epochs=30, n_bootstrap=50,
                      progress=False)
    return {"root": root, "scores": scores, "participants": participants, "atlas": atlas_path, "labels": labels,
            "model": model_dir, "metrics": metrics, "cohort": cohort}


def test_fit_crs_outputs(dataset, capsys):
    model_dir, metrics = dataset["model"], dataset["metrics"]
    for name in ("metadata.json", "weights.safetensors", "cv_metrics.tsv", "cv_predictions.tsv", "cv_differences.tsv"):
        assert (model_dir / name).is_file(), name
    assert metrics["n_patients"] == 12  # the control and the patient without a table are skipped
    assert set(metrics["mil"]) == {"mae", "rmse", "spearman", "qwk", "auroc"}
    assert {"estimate", "ci_low", "ci_high"} <= set(metrics["ridge"]["mae"])
    cvm = pd.read_csv(model_dir / "cv_metrics.tsv", sep="\t")
    assert list(cvm.columns) == ["model", "metric", "estimate", "ci_low", "ci_high"]
    # One row per (model, metric): the documented metrics for MIL and its three baselines.
    from anomaly.crs.validation import METRICS

    models = ("mil", "ridge", "hypothesis", "mean")
    assert set(zip(cvm.model, cvm.metric)) == {(m, k) for m in models for k in METRICS}
    assert len(cvm) == len(METRICS) * 4
    cvp = pd.read_csv(model_dir / "cv_predictions.tsv", sep="\t")
    assert list(cvp.columns) == ["participant_id", "crs", *(f"crs_pred_{m}" for m in models)]
    # The paired differences: MIL against each baseline, for MAE and QWK, intervals around them.
    cvd = pd.read_csv(model_dir / "cv_differences.tsv", sep="\t")
    assert set(zip(cvd.model, cvd.metric)) == {(m, k) for m in models[1:] for k in ("mae", "qwk")}
    mae = cvm[cvm.metric == "mae"].set_index("model").estimate
    row = cvd[(cvd.model == "ridge") & (cvd.metric == "mae")].iloc[0]
    assert row.difference == pytest.approx(mae["mil"] - mae["ridge"], abs=1e-9)
    assert row.ci_low <= row.difference <= row.ci_high
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["atlas"] == "tiny" and 0 < meta["conformal"]["quantile"] <= 23
    assert meta["training"]["n_patients"] == 12


def test_fit_crs_rejects_bad_input(dataset, tmp_path):
    with pytest.raises(AnomalyInputError, match="loss"):
        fit_crs(dataset["scores"], dataset["participants"], tmp_path / "m", loss="bogus", progress=False)
    with pytest.raises(AnomalyInputError, match="inside the input"):
        fit_crs(dataset["scores"], dataset["participants"], dataset["scores"] / "m", progress=False)


def test_predict_crs_tables_and_maps(dataset, tmp_path):
    out_tsv = tmp_path / "pred" / "predictions.tsv"
    df = predict_crs(dataset["scores"], dataset["model"], out_tsv, atlas_img=dataset["atlas"], glass_brains=False,
                     progress=False)
    assert list(df.columns[:4]) == ["participant_id", "crs_pred", "crs_lower", "crs_upper"]
    assert len(df) == 12 and df[["crs_pred", "crs_lower", "crs_upper"]].notna().all().all()
    assert ((df.crs_lower <= df.crs_pred) & (df.crs_pred <= df.crs_upper)).all()
    # The interval is CV+ from the saved fold models (one per fold of the 3-fold CV).
    meta = json.loads((dataset["model"] / "metadata.json").read_text())
    assert meta["conformal"]["method"] == "cv+" and len(meta["cv_plus"]["folds"]) == 3
    assert sorted(set(meta["cv_plus"]["fold_of"])) == [0, 1, 2]
    assert {"", "pet"} <= set(meta["cv_plus"]["residuals"])
    model = load_crs_model(dataset["model"])
    assert len(model.cv_plus.fold_models) == 3
    # Predictions on the training patients beat the mean baseline computed here.
    truth = pd.Series(dataset["cohort"].crs, index=dataset["cohort"].bags.participant_ids)
    y = truth.loc[df.participant_id].to_numpy(float)
    assert np.abs(df.crs_pred - y).mean() < np.abs(y - y.mean()).mean()
    assert set(df.crs_level) <= {"UWS-like", "MCS-like"}
    written = pd.read_csv(out_tsv, sep="\t")
    assert np.allclose(written.crs_pred, df.crs_pred, atol=1e-4)
    att = pd.read_csv(tmp_path / "pred" / "predictions_attention.tsv", sep="\t")
    assert list(att.columns) == ["participant_id", "index", "name", "attention"] and len(att) == 12 * 5
    assert np.allclose(att.groupby("participant_id").attention.sum(), 1.0, atol=1e-4)

    pid = df.participant_id.iloc[0]
    a_img = nib.load(tmp_path / "pred" / pid / f"{pid}_{SPACE}_stat-attention_statmap.nii.gz")
    r_img = nib.load(tmp_path / "pred" / pid / f"{pid}_{SPACE}_stat-crsrelevant_statmap.nii.gz")
    anomaly = nib.load(dataset["scores"] / pid / f"{pid}_{SPACE}_stat-anomaly_statmap.nii.gz").get_fdata()
    labels = dataset["labels"]
    sub_att = att[att.participant_id == pid].set_index("index").attention
    vox = tuple(np.argwhere(labels == 4)[0])
    assert a_img.get_fdata()[vox] == pytest.approx(sub_att[4], rel=1e-5)
    assert r_img.get_fdata()[vox] == pytest.approx(anomaly[vox] * sub_att[4] * 5, rel=1e-4)
    assert a_img.get_fdata()[labels == 0].max() == 0


def test_predict_crs_glass_brains_and_maps_dir(dataset, tmp_path):
    pid = dataset["cohort"].bags.participant_ids[1]
    maps = tmp_path / "maps"
    predict_crs(dataset["scores"], dataset["model"], tmp_path / "p.tsv", maps_dir=maps, participant_ids=[pid],
                atlas_img=dataset["atlas"], progress=False)
    for stat in ("attention", "crsrelevant"):
        assert (maps / pid / f"{pid}_{SPACE}_stat-{stat}_statmap.nii.gz").is_file()
        assert (maps / pid / f"{pid}_{SPACE}_stat-{stat}_glassbrain.png").is_file()


def test_predict_without_resolvable_atlas_still_writes_tables(dataset, tmp_path, capsys):
    df = predict_crs(dataset["scores"], dataset["model"], tmp_path / "p.tsv", progress=False)
    assert len(df) == 12 and (tmp_path / "p_attention.tsv").is_file()
    assert "maps skipped" in capsys.readouterr().err
    assert not any(tmp_path.glob("sub-*"))


def test_group_analysis(dataset, tmp_path):
    out = group_analysis(dataset["scores"], dataset["participants"], tmp_path / "group", crs_model=dataset["model"],
                         atlas_img=dataset["atlas"], glass_brains=False)
    corr = pd.read_csv(out["correlations"], sep="\t")
    assert set(corr.feature) == {"anomaly_mean", "pet_z_mean"} and len(corr) == 10
    assert {"rho", "p", "q", "significant"} <= set(corr.columns)
    bands = pd.read_csv(out["bands"], sep="\t")
    assert bands.n.sum() == 12
    for key, path in out.items():
        assert path.is_file(), key
    labels = dataset["labels"]
    rho_img = nib.load(out["rho_pet_z_mean"]).get_fdata()
    pet = corr[corr.feature == "pet_z_mean"].set_index("index").rho
    assert rho_img[tuple(np.argwhere(labels == 2)[0])] == pytest.approx(pet[2], rel=1e-5)
    att = pd.read_csv(out["attention"], sep="\t")
    assert att.attention_mean.sum() == pytest.approx(1.0, abs=1e-4)
    # Band means are voxel means of the members' anomaly maps.
    band = bands[bands.n_maps > 0].iloc[0]
    members = band.participant_ids.split(",")
    expected = np.mean([nib.load(dataset["scores"] / p / f"{p}_{SPACE}_stat-anomaly_statmap.nii.gz").get_fdata()
                        for p in members], axis=0)
    got = nib.load(out[f"band_{band.band}"]).get_fdata()
    assert np.allclose(got, expected, atol=1e-5)


def test_signed_glass_brain(tmp_path):
    from anomaly.cli.crs import plot_glass_brain

    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = [-80, -116, -72]
    data = np.zeros((20, 24, 20), np.float32)
    data[5:8, 10:14, 8:12] = -0.3  # left hemisphere: negative
    data[12:15, 10:14, 8:12] = 0.3  # right hemisphere: positive
    data[10, 20, 10] = 0.6  # sets the colour scale, so that +-0.3 are mid-scale (not white)
    out = plot_glass_brain(nib.Nifti1Image(data, affine), tmp_path / "rho.png", title="rho", signed=True)
    from matplotlib.image import imread

    pixels = imread(out)[..., :3]
    width = pixels.shape[1]
    body = pixels[:, : int(0.9 * width)]  # without the colour bar, which shows both colours anyway
    cold = (body[..., 2] - body[..., 0]) > 0.3  # blue: negative values
    warm = (body[..., 0] - body[..., 2]) > 0.3  # red: positive values
    assert cold.sum() > 500 and warm.sum() > 500
    # In the coronal view (left on the left), blue lies left of red.
    coronal = slice(int(0.35 * width), int(0.6 * width))
    assert np.nonzero(cold[:, coronal])[1].mean() + 30 < np.nonzero(warm[:, coronal])[1].mean()


def test_group_analysis_accepts_a_dataframe(dataset, tmp_path):
    parts = pd.read_csv(dataset["participants"], sep="\t", na_values=["n/a"])
    parts["participant_id"] = parts["participant_id"].str.replace("sub-", "", regex=False)
    out = group_analysis(dataset["scores"], parts, tmp_path / "g", atlas_img=dataset["atlas"], glass_brains=False)
    assert "attention" not in out and out["correlations"].is_file()
    parts.loc[0, "crs"] = 30
    with pytest.raises(AnomalyInputError, match="0..23"):
        group_analysis(dataset["scores"], parts, tmp_path / "g2", glass_brains=False)


def test_predict_from_tables_matches_predict_crs(dataset, tmp_path):
    from anomaly.crs import load_crs_model, predict_from_tables

    pid = dataset["cohort"].bags.participant_ids[2]
    table = pd.read_csv(dataset["scores"] / pid / f"{pid}_{SPACE}_atlas-tiny_regions.tsv", sep="\t", na_values=["n/a"])
    glob = json.loads((dataset["scores"] / pid / f"{pid}_scores.json").read_text())
    model = load_crs_model(dataset["model"])
    out = predict_from_tables(model, {"tiny": table}, global_values=glob)
    ref = predict_crs(dataset["scores"], dataset["model"], tmp_path / "p.tsv", participant_ids=[pid],
                      glass_brains=False, progress=False)
    assert out["crs_pred"] == pytest.approx(ref.crs_pred.iloc[0], abs=1e-3)
    assert out["crs_lower"] <= out["crs_pred"] <= out["crs_upper"] and out["interval_level"] == pytest.approx(0.9)
    json.dumps(out)  # JSON-ready for scores.json


def test_fit_crs_feature_choice_reaches_model_and_cli_errors(dataset, tmp_path, capsys):
    from anomaly.cli.main import main

    meta = json.loads((dataset["model"] / "metadata.json").read_text())
    # The default: each modality's mean z (and the focal PET log ratio where scored).
    assert set(meta["feature_names"]) >= {"T1w_z_mean", "FLAIR_z_mean", "pet_z_mean"}
    assert set(meta["feature_names"]) <= {"T1w_z_mean", "FLAIR_z_mean", "pet_z_mean", "pet_focal_logratio_z"}
    assert meta["state"]["global_feature_names_"] == ["global_cortical_pet_percent"]
    out = tmp_path / "m"
    rc = main(["fit-crs", str(dataset["scores"]), "--participants", str(dataset["participants"]), "--out", str(out),
               "--cv", "kfold:3", "--seeds", "1", "--epochs", "5", "--features", "pet_z_mean,FLAIR_z_mean",
               "--global-features", "none", "--global-coupling", "--channels", "3", "--quiet"])
    assert rc == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["params"]["channels"] == 3 and meta["params"]["epochs"] == 5
    assert meta["feature_names"] == ["pet_z_mean", "FLAIR_z_mean"] and meta["state"]["global_feature_names_"] == []
    # The option reaches the regressor; without a focal PET feature there is nothing to correct.
    assert meta["params"]["global_coupling"] is True and meta["state"]["global_coupling_"] == {}
    # The saved model predicts from full tables: it picks its own columns.
    pred = predict_crs(dataset["scores"], out, tmp_path / "p.tsv", progress=False)
    assert pred["crs_pred"].notna().all()
    capsys.readouterr()
    bad = tmp_path / "bad"
    rc = main(["fit-crs", str(dataset["scores"]), "--participants", str(dataset["participants"]), "--out", str(bad),
               "--features", "anomaly_mean,bogus", "--quiet"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert rc == 2 and len(err) == 1 and err[0].startswith("anomaly fit-crs: error: ")
    assert str(dataset["scores"]) in err[0] and "no feature 'bogus'" in err[0]
    assert not bad.exists()
