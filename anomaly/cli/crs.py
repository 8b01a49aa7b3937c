"""The CRS-R commands (``fit-crs``, ``predict``, ``group``): stages wired together.

Plain functions with keyword arguments, called by :mod:`anomaly.cli.main` and usable
from notebooks. Each validates its inputs (``AnomalyInputError`` with a one-line
message), reads the score folders through :mod:`anomaly.crs`, prints progress on
stderr and tables on stdout, writes its outputs atomically, draws the glass brains
(:mod:`anomaly.report.figures`) and returns its results.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anomaly.constants import CRS_MAX, SPACE
from anomaly.crs import (
    CRSModel,
    MILRegressor,
    RegionBags,
    cross_validate,
    load_crs_model,
    load_region_bags,
    region_correlations,
    save_crs_model,
    select_features,
)
from anomaly.crs.cohort import LabelledCohort, labelled_cohort
from anomaly.crs.group import crs_bands
from anomaly.crs.maps import (
    AtlasLabels,
    anomaly_map_path,
    crs_relevant_map,
    load_float_map,
    mean_image,
    paint,
)
from anomaly.crs.predict import cohort_attention, predict_table
from anomaly.crs.validation import CVResult, tune_params
from anomaly.io import AnomalyInputError, check_output_dir, save_image, write_tsv

__all__ = ["fit_crs", "group_analysis", "plot_glass_brain", "predict_crs"]


def _log(msg: str) -> None:
    print(f"anomaly: {msg}", file=sys.stderr, flush=True)


def plot_glass_brain(img: Any, out_png: str | os.PathLike, *, title: str | None = None, signed: bool = False) -> Path:
    """Glass-brain PNG via :mod:`anomaly.report.figures` (imported at call time: matplotlib is slow to import).

    Non-negative maps (attention, anomaly) use ``plot_anomaly_glass_brain``; signed maps
    (correlations) ``plot_signed_glass_brain`` with ``plot_abs=False``, a symmetric
    colour bar and every non-zero region drawn.
    """
    from anomaly.report.figures import plot_anomaly_glass_brain, plot_signed_glass_brain

    if signed:
        return Path(plot_signed_glass_brain(img, out_png, title=title, threshold=0.0))
    return Path(plot_anomaly_glass_brain(img, out_png, title=title))


def _cohort(participants: Any, scores_dir: Path, atlas: str | None) -> LabelledCohort:
    """The labelled cohort, saying which labelled participants lack a region table."""
    cohort = labelled_cohort(participants, scores_dir, atlas)
    if cohort.skipped:
        lacking = cohort.skipped
        _log(f"{len(lacking)} participant(s) with a crs value have no atlas-{cohort.atlas} region table in {scores_dir}, "
             f"skipped: {', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}")
    return cohort


# --------------------------------------------------------------------------- fit-crs
def _mil_params(*, loss: str, lds: bool, curriculum: str | None, n_seeds: int, epochs: int | None, mcs_cut: float,
                seed: int, params: Mapping[str, Any] | None,
                param_grid: Mapping[str, Sequence[Any]] | None) -> dict[str, Any]:
    """The :class:`MILRegressor` parameters of ``fit-crs``, validated before any input is read."""
    mil_params: dict[str, Any] = {"loss": loss, "lds": bool(lds), "curriculum": curriculum, "n_seeds": int(n_seeds),
                                  "mcs_cut": mcs_cut, "seed": int(seed)}
    if epochs is not None:
        mil_params["epochs"] = int(epochs)
    mil_params.update(params or {})
    try:
        MILRegressor(**mil_params)._validate_params()
        if param_grid:
            MILRegressor(**mil_params).set_params(**{k: v[0] for k, v in param_grid.items()})._validate_params()
    except (TypeError, ValueError) as exc:
        raise AnomalyInputError(f"fit-crs: {exc}") from None
    return mil_params


def _layout(bags: RegionBags, atlas: str) -> str:
    """The regions and inputs the regressor sees, in words."""
    return (f"{len(bags.region_index)} atlas-{atlas} regions, features {', '.join(bags.feature_names)}; "
            f"subject-level {', '.join(bags.global_feature_names) or 'none'}")


def _cross_validate(cohort: LabelledCohort, bags: RegionBags, mil_params: dict[str, Any],
                    **kwargs: Any) -> tuple[CVResult, float]:
    """:func:`~anomaly.crs.cross_validate` of the MIL and the baselines, and its wall time in seconds.

    A CV the cohort cannot hold is an input error.
    """
    start = time.perf_counter()
    try:
        result = cross_validate(bags, cohort.y, mil_params, y_sd=cohort.y_sd, **kwargs)
    except ValueError as exc:  # e.g. more folds than patients
        raise AnomalyInputError(f"fit-crs: {exc}") from None
    return result, time.perf_counter() - start


def _report_cv(result: CVResult, out: Path, cv: str, n: int) -> None:
    """Print the cross-validated table and write cv_metrics.tsv and cv_predictions.tsv."""
    print(f"Cross-validated CRS-R prediction ({cv}, n={n}; estimate [95% bootstrap CI])")
    print(result.table().to_string())
    if not result.differences.empty:
        print("MIL minus each baseline, paired bootstrap (MAE: below 0 is better; QWK: above 0)")
        print(result.differences.round(3).to_string(index=False))
    sys.stdout.flush()
    write_tsv(result.metrics, out / "cv_metrics.tsv")
    columns = ["participant_id", "crs", *(c for c in result.predictions.columns if c.startswith("crs_pred_")
                                          and not c.endswith("_sd"))]
    write_tsv(result.predictions[columns], out / "cv_predictions.tsv")
    if not result.differences.empty:
        write_tsv(result.differences, out / "cv_differences.tsv")


def _metrics_dict(metrics: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in metrics.itertuples(index=False):
        out.setdefault(r.model, {})[r.metric] = {"estimate": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high}
    return out


def _fit_final(cohort: LabelledCohort, bags: RegionBags, mil_params: dict[str, Any], result: CVResult, out: Path, *,
               param_grid: Mapping[str, Sequence[Any]] | None, alpha: float, mcs_cut: float, seed: int,
               training: dict[str, Any]) -> float:
    """Fit the model on all patients and save its folder; returns the conformal radius."""
    final_params = dict(mil_params)
    if param_grid:
        final_params.update(tune_params(bags, cohort.y, mil_params, param_grid, y_sd=cohort.y_sd, seed=seed))
    _log("fit-crs: fitting the final model on all patients")
    model = MILRegressor(**final_params).fit(bags, cohort.y, cohort.y_sd)
    # An infinite radius (too few patients) means "no information": the full scale.
    q = float(min(result.conformal_quantile, CRS_MAX))
    save_crs_model(model, out, conformal_quantile=q, alpha=alpha, mcs_cut=mcs_cut, cv_metrics=result.metrics,
                   cv_plus=result.cv_plus, extra={"training": {**training, "tuned_params": result.best_params,
                                       "final_params": dict(final_params)}})
    _log(f"fit-crs: model saved to {out}")
    return q


def fit_crs(scores_dir: str | os.PathLike, participants: str | os.PathLike | pd.DataFrame, out_dir: str | os.PathLike, *,
            loss: str = "mae", cv: str = "loo", atlas: str | None = None, lds: bool = False,
            curriculum: str | None = None, n_seeds: int = 5, epochs: int | None = None, mcs_cut: float = 8,
            seed: int = 0, alpha: float = 0.1, n_bootstrap: int = 1000, params: Mapping[str, Any] | None = None,
            param_grid: Mapping[str, Sequence[Any]] | None = None, features: str | Sequence[str] | None = None,
            global_features: str | Sequence[str] | None = None, n_jobs: int = 1,
            progress: bool = True) -> dict[str, Any]:
    """Cross-validate and fit the CRS-R regressor; save the model folder.

    Parameters
    ----------
    scores_dir : path
        Output of ``anomaly score`` (region tables).
    participants : path or DataFrame
        participants.tsv with ``crs`` (and optional ``crs_sd``); participants with a crs
        value and a region table are used.
    out_dir : path
        Model folder: ``metadata.json``, ``weights.safetensors``, ``cv_metrics.tsv``,
        ``cv_predictions.tsv`` (out-of-fold estimates of every model) and
        ``cv_differences.tsv`` (MIL minus each baseline, paired bootstrap).
    loss, lds, curriculum, n_seeds, epochs, mcs_cut, seed, params
        :class:`~anomaly.crs.MILRegressor` parameters (``epochs`` None: its default;
        ``params``: any further ones). ``mcs_cut`` is also the UWS/MCS cut of the AUROC.
    cv : {"loo", "kfold:K", "kfold:KxR"}, default="loo"
    atlas : str, optional
        Atlas of the region tables (automatic if only one).
    alpha, n_bootstrap : float, int
        Conformal miscoverage (0.1: 90% intervals); bootstrap draws of the metric CIs.
    param_grid : mapping, optional
        Hyperparameters to tune by nested CV (and by CV on all data for the final fit).
    features, global_features : "all", "none", list or comma-separated str, optional
        Columns given to the regressor AND the ridge baseline (the arousal x awareness
        baseline reads ``anomaly_mean`` and the global cortical PET level; see
        :func:`~anomaly.crs.select_features`).
    n_jobs, progress : int, bool
        CV folds fitted in parallel processes (-1: one per core; results do not
        depend on it); progress bars on stderr.

    Returns
    -------
    dict
        ``{model: {metric: {"estimate", "ci_low", "ci_high"}}}`` for "mil", "ridge",
        "hypothesis" and "mean", plus ``"conformal_quantile"`` and ``"n_patients"``.
    """
    scores_dir = Path(scores_dir)
    mil_params = _mil_params(loss=loss, lds=lds, curriculum=curriculum, n_seeds=n_seeds, epochs=epochs,
                             mcs_cut=mcs_cut, seed=seed, params=params, param_grid=param_grid)
    cohort = _cohort(participants, scores_dir, atlas)
    bags = select_features(cohort.bags, features, global_features, where=str(scores_dir))
    # Created only once every input is known to be good: a refused run leaves nothing.
    out = check_output_dir(out_dir, inputs=(scores_dir,))
    n = len(cohort.y)
    _log(f"fit-crs: {n} patients, {_layout(bags, cohort.atlas)}; loss={loss}, cv={cv}")
    result, cv_seconds = _cross_validate(cohort, bags, mil_params, cv=cv, seed=seed, mcs_cut=mcs_cut, alpha=alpha,
                                         n_bootstrap=n_bootstrap, param_grid=param_grid, n_jobs=n_jobs,
                                         progress=progress, keep_fold_models=True)
    _report_cv(result, out, cv, n)
    q = _fit_final(cohort, bags, mil_params, result, out, param_grid=param_grid, alpha=alpha, mcs_cut=mcs_cut,
                   seed=seed, training={"n_patients": int(n), "participant_ids": bags.participant_ids,
                                        "scores_dir": str(scores_dir), "cv": str(cv), "seed": int(seed),
                                        "cv_seconds": cv_seconds})
    return {**_metrics_dict(result.metrics), "conformal_quantile": q, "n_patients": int(n)}


# --------------------------------------------------------------------------- predict
def _write_predictions(df: pd.DataFrame, att_df: pd.DataFrame, out_tsv: Path) -> None:
    """The predictions TSV and ``<stem>_attention.tsv`` next to it."""
    check_output_dir(out_tsv.parent, inputs=())
    write_tsv(df, out_tsv)
    stem = out_tsv.name.removesuffix(".tsv")
    write_tsv(att_df, out_tsv.with_name(f"{stem}_attention.tsv"))


def _subject_maps(pid: str, values: dict[int, float], anomaly_img: Any, labels: Any, maps: Path,
                  glass_brains: bool) -> None:
    """One subject's attention map and CRS-relevant anomaly map (+ glass brains)."""
    att_img = paint(labels, values)
    base = maps / pid / f"{pid}_{SPACE}"
    save_image(att_img, f"{base}_stat-attention_statmap.nii.gz")
    if glass_brains:
        plot_glass_brain(att_img, f"{base}_stat-attention_glassbrain.png", title=f"{pid} attention")
    if anomaly_img is not None:
        rel_img = crs_relevant_map(anomaly_img, labels, values)
        save_image(rel_img, f"{base}_stat-crsrelevant_statmap.nii.gz")
        if glass_brains:
            plot_glass_brain(rel_img, f"{base}_stat-crsrelevant_glassbrain.png", title=f"{pid} CRS-relevant anomaly")


def _explanation_maps(att_df: pd.DataFrame, scores_dir: Path, maps: Path, atlas: Any, *, glass_brains: bool,
                      progress: bool) -> None:
    """Attention and CRS-relevant maps of every predicted subject."""
    from tqdm.auto import tqdm

    labels_of = AtlasLabels(atlas)
    subjects = list(dict.fromkeys(att_df["participant_id"]))
    for pid in tqdm(subjects, desc="maps", disable=not progress, file=sys.stderr, leave=False):
        anomaly_path = anomaly_map_path(scores_dir, pid)
        anomaly_img = load_float_map(anomaly_path) if anomaly_path is not None else None
        labels = labels_of.on(anomaly_img) if anomaly_img is not None else labels_of.native()
        if labels is None:
            _log(labels_of.error)
            break
        rows = att_df[att_df["participant_id"] == pid]
        values = dict(zip(rows["index"].astype(int).tolist(), rows["attention"].tolist()))
        _subject_maps(pid, values, anomaly_img, labels, maps, glass_brains)


def predict_crs(scores_dir: str | os.PathLike, model_dir: str | os.PathLike, out_tsv: str | os.PathLike, *,
                maps_dir: str | os.PathLike | None = None, participant_ids: Sequence[str] | None = None,
                atlas_img: Any = None, glass_brains: bool = True, progress: bool = True) -> pd.DataFrame:
    """Predict the CRS-R with intervals, attention tables and explanation maps.

    Parameters
    ----------
    scores_dir : path
        Output of ``anomaly score``.
    model_dir : path
        A folder written by :func:`fit_crs`.
    out_tsv : path
        Predictions: participant_id, crs_pred, crs_lower, crs_upper, crs_pred_sd
        (ensemble spread), crs_level. A second table ``<stem>_attention.tsv`` holds
        participant_id, index, name, attention.
    maps_dir : path, optional
        Per-subject maps (default: the folder of ``out_tsv``):
        ``sub-<l>/sub-<l>_space-MNI152NLin2009cAsym_stat-attention_statmap.nii.gz``
        (attention painted on the atlas) and ``..._stat-crsrelevant_statmap.nii.gz``
        (the subject's anomaly map times its region's attention x R, so that uniform
        attention leaves the map unchanged), with glass brains.
    participant_ids : sequence of str, optional
        Default: every subject with a region table.
    atlas_img : path or image, optional
        Label image to paint on (default: the model's atlas via ``anomaly.atlas``).
    glass_brains : bool, default=True
    progress : bool, default=True

    Returns
    -------
    DataFrame
        The predictions table.
    """
    scores_dir, out_tsv = Path(scores_dir), Path(out_tsv)
    model = load_crs_model(model_dir)
    bags = load_region_bags(scores_dir, atlas=model.atlas, participant_ids=participant_ids)
    if not set(bags.feature_names) & set(model.estimator.feature_names_):
        raise AnomalyInputError(f"{scores_dir}: the region tables share no feature with the model in {model_dir}")
    df, att_df = predict_table(model, bags)
    _write_predictions(df, att_df, out_tsv)
    maps = Path(maps_dir) if maps_dir is not None else out_tsv.parent
    _explanation_maps(att_df, scores_dir, maps, atlas_img if atlas_img is not None else model.atlas,
                      glass_brains=glass_brains, progress=progress)
    _log(f"predict: {len(df)} predictions written to {out_tsv}")
    return df


# --------------------------------------------------------------------------- group
def _band_maps(cohort: LabelledCohort, scores_dir: Path, out: Path, bands: Sequence[tuple[int, int]],
               glass_brains: bool, outputs: dict[str, Path]) -> Any:
    """Mean anomaly map of each CRS-R band and group_bands.tsv; returns the first map (a grid) or None."""
    bags = cohort.bags
    map_paths = {pid: anomaly_map_path(scores_dir, pid) for pid in bags.participant_ids}
    ref_img = None
    band_rows = []
    for label, member in crs_bands(cohort.y, bands).items():
        pids = [pid for pid, m in zip(bags.participant_ids, member) if m]
        paths = [map_paths[p] for p in pids if map_paths[p] is not None]
        band_rows.append({"band": label, "n": len(pids), "n_maps": len(paths), "participant_ids": ",".join(pids)})
        if not paths:
            continue
        mean_img = mean_image(paths)
        ref_img = ref_img if ref_img is not None else mean_img
        name = f"group_desc-crs{label}_stat-anomaly"
        outputs[f"band_{label}"] = save_image(mean_img, out / f"{name}_statmap.nii.gz")
        if glass_brains:
            plot_glass_brain(mean_img, out / f"{name}_glassbrain.png",
                             title=f"Mean anomaly, CRS-R {label.replace('to', '-')} (n={len(paths)})")
    outputs["bands"] = write_tsv(pd.DataFrame(band_rows), out / "group_bands.tsv")
    return ref_img


def _rho_maps(corr: pd.DataFrame, labels: Any, out: Path, glass_brains: bool, outputs: dict[str, Path]) -> None:
    """Spearman rho of each feature painted on the atlas (+ signed glass brains)."""
    for feat in corr["feature"].unique():
        sub = corr[corr["feature"] == feat]
        values = {int(k): (0.0 if not np.isfinite(v) else float(v)) for k, v in zip(sub["index"], sub["rho"])}
        img = paint(labels, values)
        tag = feat.replace("_", "")
        outputs[f"rho_{feat}"] = save_image(img, out / f"group_feature-{tag}_stat-rho_statmap.nii.gz")
        if glass_brains:
            plot_glass_brain(img, out / f"group_feature-{tag}_stat-rho_glassbrain.png",
                             title=f"Spearman rho of {feat} with CRS-R", signed=True)


def _attention_outputs(model: CRSModel, bags: RegionBags, labels: Any, out: Path, glass_brains: bool,
                       outputs: dict[str, Path]) -> None:
    """group_attention.tsv and the cohort mean attention map (+ glass brain)."""
    att_df = cohort_attention(model, bags)
    outputs["attention"] = write_tsv(att_df, out / "group_attention.tsv")
    if labels is not None:
        img = paint(labels, dict(zip(att_df["index"].astype(int).tolist(), att_df["attention_mean"].tolist())))
        outputs["attention_map"] = save_image(img, out / "group_stat-attention_statmap.nii.gz")
        if glass_brains:
            plot_glass_brain(img, out / "group_stat-attention_glassbrain.png", title="Cohort mean attention")


def group_analysis(scores_dir: str | os.PathLike, participants: str | os.PathLike | pd.DataFrame,
                   out_dir: str | os.PathLike, *, atlas: str | None = None,
                   bands: Sequence[tuple[int, int]] = ((0, 7), (8, 15), (16, 23)),
                   crs_model: str | os.PathLike | None = None,
                   features: Sequence[str] = ("anomaly_mean", "pet_z_mean"), fdr: float = 0.05,
                   atlas_img: Any = None, glass_brains: bool = True) -> dict[str, Path]:
    """Cohort-level association of regional anomaly with the CRS-R.

    Writes to ``out_dir``: ``group_correlations.tsv`` (per region and feature, Spearman
    rho with the CRS-R, p, Benjamini-Hochberg q and ``significant``, q <= ``fdr``);
    ``group_desc-crs<lo>to<hi>_stat-anomaly_statmap.nii.gz`` (+ glass brain), the
    voxel-wise mean anomaly map of the patients in each CRS-R band, and
    ``group_bands.tsv`` (band, n, participant ids);
    ``group_feature-<f>_stat-rho_statmap.nii.gz`` (+ signed glass brain), rho painted
    on the atlas regions; with ``crs_model``, ``group_attention.tsv`` (cohort mean/SD
    attention per region) and ``group_stat-attention_statmap.nii.gz`` (+ glass brain).

    Parameters
    ----------
    scores_dir, participants, out_dir : path (participants: or DataFrame)
    atlas : str, optional
        Atlas of the region tables (automatic if only one).
    bands : sequence of (low, high), default=((0, 7), (8, 15), (16, 23))
        Inclusive CRS-R bands.
    crs_model : path, optional
        A CRS model folder, for the cohort mean attention.
    features : sequence of str
    fdr : float, default=0.05
    atlas_img : path or image, optional
        Label image to paint on (default: the atlas by name via ``anomaly.atlas``).
    glass_brains : bool, default=True

    Returns
    -------
    dict
        Output name -> path.
    """
    scores_dir = Path(scores_dir)
    out = check_output_dir(out_dir, inputs=(scores_dir,))
    cohort = _cohort(participants, scores_dir, atlas)
    outputs: dict[str, Path] = {}
    _log(f"group: {len(cohort.y)} patients, atlas-{cohort.atlas}")
    corr = region_correlations(cohort.bags, cohort.y, features=features, fdr=fdr)
    outputs["correlations"] = write_tsv(corr, out / "group_correlations.tsv")
    ref_img = _band_maps(cohort, scores_dir, out, bands, glass_brains, outputs)
    labels_of = AtlasLabels(atlas_img if atlas_img is not None else cohort.atlas)
    labels = labels_of.on(ref_img) if ref_img is not None else labels_of.native()
    if labels is None:
        _log(labels_of.error)
    else:
        _rho_maps(corr, labels, out, glass_brains, outputs)
    if crs_model is not None:
        _attention_outputs(load_crs_model(crs_model), cohort.bags, labels, out, glass_brains, outputs)
    _log(f"group: outputs written to {out}")
    return outputs
