"""High-level CRS-R commands called by the CLI (``fit-crs``, ``predict``, ``group``).

Plain functions with keyword arguments: they validate their inputs (raising
``AnomalyInputError`` with a one-line message), print progress on stderr and tables on
stdout, write their outputs atomically and return them.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from anomaly.io import AnomalyInputError, check_output_dir, read_participants, save_image, write_tsv

from .maps import load_atlas_on, paint_regions, plot_glass_brain
from .features import (DEFAULT_FEATURES, DEFAULT_GLOBAL_FEATURES, RegionBags, bags_from_tables, find_region_tables,
                       load_region_bags)
from .group import crs_bands, region_correlations
from .losses import N_LEVELS
from .model import MILRegressor
from .modelio import CRSModel, load_crs_model, save_crs_model
from .validation import cross_validate, tune_params

__all__ = ["fit_crs", "select_features", "predict_crs", "predict_from_tables", "group_analysis", "crs_level"]

SPACE = "space-MNI152NLin2009cAsym"


def _log(msg: str) -> None:
    print(f"anomaly: {msg}", file=sys.stderr, flush=True)


def crs_level(pred: Sequence[float], mcs_cut: float = 8) -> list[str]:
    """``"MCS-like"`` for predictions >= ``mcs_cut``, else ``"UWS-like"``."""
    return ["MCS-like" if p >= mcs_cut else "UWS-like" for p in np.asarray(pred, dtype=float)]


def _participants_table(participants: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """participants.tsv through the input gate; a DataFrame (notebooks) is normalised alike."""
    if not isinstance(participants, pd.DataFrame):
        return read_participants(participants), str(participants)
    df = participants.copy()
    if "participant_id" not in df.columns or "crs" not in df.columns:
        raise AnomalyInputError("participants: the table needs participant_id and crs columns")
    df["participant_id"] = [p if p.startswith("sub-") else f"sub-{p}" for p in df["participant_id"].astype(str)]
    crs = pd.to_numeric(df["crs"], errors="coerce")
    known = crs.dropna()
    if ((known < 0) | (known > N_LEVELS - 1) | (known.round() != known)).any():
        raise AnomalyInputError(f"participants: crs must be an integer in 0..{N_LEVELS - 1}")
    df["crs"] = crs.astype("Int64")
    df["crs_sd"] = pd.to_numeric(df["crs_sd"], errors="coerce") if "crs_sd" in df.columns else np.nan
    return df, "participants"


def _labelled_patients(participants: Any, scores_dir: Path, atlas: str | None) -> tuple[RegionBags, np.ndarray, np.ndarray | None, str]:
    """Bags and labels of the participants with a CRS-R value and a region table."""
    df, name = _participants_table(participants)
    df = df[df["crs"].notna()]
    if df.empty:
        raise AnomalyInputError(f"{name}: no participant has a crs value")
    atlas_name, tables = find_region_tables(scores_dir, atlas=atlas)
    have = df["participant_id"].isin(tables)
    if (~have).any():
        lacking = df.loc[~have, "participant_id"].tolist()
        _log(f"{len(lacking)} participant(s) with a crs value have no atlas-{atlas_name} region table in {scores_dir}, "
             f"skipped: {', '.join(lacking[:5])}{' ...' if len(lacking) > 5 else ''}")
    df = df[have]
    if len(df) < 5:
        raise AnomalyInputError(f"{scores_dir}: only {len(df)} participant(s) with both a crs value and a region table (need >= 5)")
    bags = load_region_bags(scores_dir, atlas=atlas_name, participant_ids=df["participant_id"].tolist())
    y = df["crs"].to_numpy(dtype=float)
    sd = df["crs_sd"].to_numpy(dtype=float) if "crs_sd" in df.columns else None
    if sd is not None and not np.isfinite(sd).any():
        sd = None
    return bags, y, sd, atlas_name


def _names(value: str | Sequence[str] | None) -> str | list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> list; ``"all"`` / ``"none"`` / None unchanged."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("all", "none"):
            return value.strip().lower()
        value = value.split(",")
    return [str(v).strip() for v in value if str(v).strip()]


def select_features(bags: RegionBags, features: str | Sequence[str] | None = None,
                    global_features: str | Sequence[str] | None = None, *, where: str = "region tables") -> RegionBags:
    """Keep the region features and subject-level values the regressor should see.

    Parameters
    ----------
    bags : RegionBags
    features : "all", list or comma-separated str, optional
        Region-table columns. Default: :data:`~anomaly.crs.features.DEFAULT_FEATURES`.
    global_features : "all", "none", list or comma-separated str, optional
        Values of ``sub-<l>_scores.json``. Default:
        :data:`~anomaly.crs.features.DEFAULT_GLOBAL_FEATURES` where present (a model
        without PET has no global cortical PET level).
    where : str
        Named in error messages.

    Raises
    ------
    anomaly.io.AnomalyInputError
        A requested name that no region table or scores file has.
    """
    features, global_features = _names(features), _names(global_features)
    if features is None:
        features = [f for f in DEFAULT_FEATURES if f in bags.feature_names] or "all"
    if global_features is None:
        global_features = [g for g in DEFAULT_GLOBAL_FEATURES if g in bags.global_feature_names]
    try:
        return bags.select(None if features == "all" else features,
                           None if global_features == "all" else [] if global_features == "none" else global_features)
    except KeyError as exc:
        raise AnomalyInputError(f"{where}: {exc.args[0]}") from None


def _metrics_dict(metrics: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for r in metrics.itertuples(index=False):
        out.setdefault(r.model, {})[r.metric] = {"estimate": r.estimate, "ci_low": r.ci_low, "ci_high": r.ci_high}
    return out


def fit_crs(scores_dir: str | os.PathLike, participants: str | os.PathLike | pd.DataFrame, out_dir: str | os.PathLike, *,
            loss: str = "mse", cv: str = "loo", atlas: str | None = None, lds: bool = False,
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
        participants.tsv with ``crs`` (and optional ``crs_sd``). Participants with a
        crs value and a region table are used.
    out_dir : path
        Model folder: ``metadata.json``, ``weights.safetensors``, ``cv_metrics.tsv``,
        ``cv_predictions.tsv``.
    loss : str, default="mse"
        See :func:`anomaly.crs.losses.parse_loss` (e.g. ``"coral+rank"``).
    cv : {"loo", "kfold:K", "kfold:KxR"}, default="loo"
    atlas : str, optional
        Atlas of the region tables (automatic if only one).
    lds : bool, default=False
        Label-distribution-smoothing weights.
    curriculum : {None, "confidence", "self-paced", "random"}
    n_seeds : int, default=5
        Ensemble size.
    epochs : int, optional
        Default: the estimator's.
    mcs_cut : float, default=8
        UWS/MCS cut for the AUROC and the predicted level.
    seed : int, default=0
    alpha : float, default=0.1
        Conformal miscoverage (0.1 -> 90% intervals).
    n_bootstrap : int, default=1000
    params : mapping, optional
        Further :class:`MILRegressor` parameters (hidden, lr, dropout...).
    param_grid : mapping, optional
        Hyperparameters to tune by nested CV (and by CV on all data for the final fit).
    features : "all", list or comma-separated str, optional
        Region-table columns given to the regressor AND to the ridge baseline.
        Default: ``anomaly_mean`` (see :func:`select_features`).
    global_features : "all", "none", list or comma-separated str, optional
        Subject-level values (``sub-<l>_scores.json``). Default:
        ``global_cortical_pet_percent`` where present.
    n_jobs : int, default=1
        Cross-validation folds fitted in parallel processes (-1: one per core); the
        results do not depend on it.
    progress : bool, default=True

    Returns
    -------
    dict
        ``{model: {metric: {"estimate", "ci_low", "ci_high"}}}`` for "mil", "ridge" and
        "mean", plus ``"conformal_quantile"`` and ``"n_patients"``.
    """
    scores_dir = Path(scores_dir)
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

    bags, y, y_sd, atlas_name = _labelled_patients(participants, scores_dir, atlas)
    bags = select_features(bags, features, global_features, where=str(scores_dir))
    # Created only once every input is known to be good: a refused run leaves nothing.
    out = check_output_dir(out_dir, inputs=(scores_dir,))
    _log(f"fit-crs: {len(y)} patients, {len(bags.region_index)} atlas-{atlas_name} regions, "
         f"features {', '.join(bags.feature_names)}; subject-level {', '.join(bags.global_feature_names) or 'none'}; "
         f"loss={loss}, cv={cv}")
    try:
        t0 = time.perf_counter()
        result = cross_validate(bags, y, mil_params, y_sd=y_sd, cv=cv, seed=seed, mcs_cut=mcs_cut, alpha=alpha,
                                n_bootstrap=n_bootstrap, param_grid=param_grid, n_jobs=n_jobs, progress=progress)
        cv_seconds = time.perf_counter() - t0
    except ValueError as exc:  # e.g. more folds than patients
        raise AnomalyInputError(f"fit-crs: {exc}") from None

    print(f"Cross-validated CRS-R prediction ({cv}, n={len(y)}; estimate [95% bootstrap CI])")
    print(result.table().to_string())
    sys.stdout.flush()
    write_tsv(result.metrics, out / "cv_metrics.tsv")
    write_tsv(result.predictions[["participant_id", "crs", "crs_pred_mil", "crs_pred_ridge", "crs_pred_mean"]],
              out / "cv_predictions.tsv")

    final_params = dict(mil_params)
    if param_grid:
        final_params.update(tune_params(bags, y, mil_params, param_grid, y_sd=y_sd, seed=seed))
    _log("fit-crs: fitting the final model on all patients")
    model = MILRegressor(**final_params).fit(bags, y, y_sd)
    # An infinite radius (too few patients) means "no information": the full scale.
    q = float(min(result.conformal_quantile, N_LEVELS - 1))
    save_crs_model(model, out, conformal_quantile=q, alpha=alpha, mcs_cut=mcs_cut, cv_metrics=result.metrics,
                   extra={"training": {"n_patients": int(len(y)), "participant_ids": bags.participant_ids,
                                       "scores_dir": str(scores_dir), "cv": str(cv), "seed": int(seed),
                                       "cv_seconds": cv_seconds, "tuned_params": result.best_params,
                                       "final_params": {k: v for k, v in final_params.items()}}})
    _log(f"fit-crs: model saved to {out}")
    metrics = _metrics_dict(result.metrics)
    return {**metrics, "conformal_quantile": q, "n_patients": int(len(y))}


# --------------------------------------------------------------------------- maps
def _anomaly_map(scores_dir: Path, pid: str) -> Path | None:
    sub = scores_dir / pid
    found = sorted(sub.glob(f"{pid}_*stat-anomaly_statmap.nii.gz"))
    preferred = [p for p in found if SPACE in p.name]
    return (preferred or found or [None])[0]


class _Painter:
    """Resolve the atlas once per grid and paint region values; warn once on failure."""

    def __init__(self, atlas: Any) -> None:
        self.atlas = atlas
        self.cache: dict[tuple, Any] = {}
        self.failed = False

    def labels_on(self, ref_img: Any) -> Any | None:
        if self.failed:
            return None
        key = (tuple(ref_img.shape[:3]), np.round(np.asarray(ref_img.affine), 4).tobytes())
        if key not in self.cache:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self.cache[key] = load_atlas_on(self.atlas, ref_img)
            except (AnomalyInputError, OSError, KeyError, ValueError) as exc:
                _log(f"cannot resolve atlas {self.atlas!r} ({exc}); maps skipped")
                self.failed = True
                return None
        return self.cache[key]

    def native(self) -> Any | None:
        """The atlas on its own grid (when no subject map gives a grid)."""
        import nibabel as nib

        if self.failed:
            return None
        if isinstance(self.atlas, nib.spatialimages.SpatialImage):
            return self.labels_on(self.atlas)
        if isinstance(self.atlas, (str, os.PathLike)) and str(self.atlas).endswith((".nii", ".nii.gz")):
            return self.labels_on(nib.load(str(self.atlas)))
        try:
            from anomaly.atlas import Atlas

            return self.labels_on(Atlas.load(self.atlas).image)
        except Exception as exc:  # noqa: BLE001 - any failure means: no maps, say why
            _log(f"cannot resolve atlas {self.atlas!r} ({exc.__class__.__name__}: {exc}); maps skipped")
            self.failed = True
            return None


def _load_img(path: Path) -> Any:
    import nibabel as nib

    img = nib.load(str(path))
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


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
    from tqdm.auto import tqdm

    scores_dir = Path(scores_dir)
    out_tsv = Path(out_tsv)
    model = load_crs_model(model_dir)
    bags = load_region_bags(scores_dir, atlas=model.atlas, participant_ids=participant_ids)
    est = model.estimator
    if not set(bags.feature_names) & set(est.feature_names_):
        raise AnomalyInputError(f"{scores_dir}: the region tables share no feature with the model in {model_dir}")
    bags = bags.align(region_index=est.region_index_, feature_names=est.feature_names_,
                      global_feature_names=est.global_feature_names_)
    pred, lo, hi = model.predict_interval(bags)
    _, spread = est.predict(bags, return_std=True)
    attention = est.attention(bags)
    df = pd.DataFrame({"participant_id": bags.participant_ids, "crs_pred": pred, "crs_lower": lo, "crs_upper": hi,
                       "crs_pred_sd": spread, "crs_level": crs_level(pred, model.mcs_cut)})
    check_output_dir(out_tsv.parent, inputs=())
    write_tsv(df, out_tsv)
    stem = out_tsv.name[:-4] if out_tsv.name.endswith(".tsv") else out_tsv.name
    n, R = attention.shape
    att_df = pd.DataFrame({
        "participant_id": np.repeat(bags.participant_ids, R),
        "index": np.tile(est.region_index_, n),
        "name": np.tile(np.asarray(est.region_names_, dtype=object), n),
        "attention": attention.ravel(),
    })
    write_tsv(att_df, out_tsv.with_name(f"{stem}_attention.tsv"))

    maps = Path(maps_dir) if maps_dir is not None else out_tsv.parent
    painter = _Painter(atlas_img if atlas_img is not None else model.atlas)
    for i, pid in enumerate(tqdm(bags.participant_ids, desc="maps", disable=not progress, file=sys.stderr, leave=False)):
        anomaly_path = _anomaly_map(scores_dir, pid)
        anomaly_img = _load_img(anomaly_path) if anomaly_path is not None else None
        labels = painter.labels_on(anomaly_img) if anomaly_img is not None else painter.native()
        if labels is None:
            break
        values = dict(zip(est.region_index_.tolist(), attention[i].tolist()))
        att_img = paint_regions(labels, values)
        sub = maps / pid
        base = sub / f"{pid}_{SPACE}"
        save_image(att_img, f"{base}_stat-attention_statmap.nii.gz")
        if glass_brains:
            plot_glass_brain(att_img, f"{base}_stat-attention_glassbrain.png", title=f"{pid} attention")
        if anomaly_img is not None:
            # Attention x R: a region with the uniform weight 1/R keeps its anomaly.
            weight = paint_regions(labels, {k: v * R for k, v in values.items()})
            relevant = np.asarray(anomaly_img.dataobj, dtype=np.float32) * np.asarray(weight.dataobj)
            rel_img = type(anomaly_img)(np.nan_to_num(relevant), anomaly_img.affine)
            save_image(rel_img, f"{base}_stat-crsrelevant_statmap.nii.gz")
            if glass_brains:
                plot_glass_brain(rel_img, f"{base}_stat-crsrelevant_glassbrain.png", title=f"{pid} CRS-relevant anomaly")
    _log(f"predict: {len(df)} predictions written to {out_tsv}")
    return df


def predict_from_tables(model: CRSModel | str | os.PathLike, tables: Mapping[str, pd.DataFrame], *,
                        global_values: Mapping[str, float] | None = None, n_top: int = 5) -> dict[str, Any]:
    """CRS-R estimate for ONE freshly scored subject (used by ``anomaly score --crs-model``).

    Parameters
    ----------
    model : CRSModel or path
        A loaded model (:func:`~anomaly.crs.load_crs_model`) or its folder.
    tables : mapping
        Atlas name -> the subject's region table (as written to ``*_regions.tsv``).
        The model's atlas is used; a single table is used whatever its name.
    global_values : mapping, optional
        Subject-level values (e.g. ``global_cortical_pet_percent``); missing ones are
        treated as missing inputs.
    n_top : int, default=5
        Regions with the highest attention to list.

    Returns
    -------
    dict
        JSON-ready: crs_pred, crs_lower, crs_upper, interval_level, crs_level,
        crs_pred_sd, top_attention_regions.
    """
    if not isinstance(model, CRSModel):
        model = load_crs_model(model)
    if model.atlas in tables:
        table = tables[model.atlas]
    elif len(tables) == 1:
        table = next(iter(tables.values()))
    else:
        raise AnomalyInputError(f"CRS model atlas {model.atlas!r} is not among the scored atlases ({', '.join(tables)})")
    est = model.estimator
    bags = bags_from_tables([table], participant_ids=["sub-x"], global_values=[dict(global_values or {})],
                            atlas=model.atlas, where="region table")
    bags = bags.align(region_index=est.region_index_, feature_names=est.feature_names_,
                      global_feature_names=est.global_feature_names_)
    pred, lo, hi = model.predict_interval(bags)
    _, spread = est.predict(bags, return_std=True)
    att = est.attention(bags)[0]
    top = np.argsort(-att)[:n_top]
    return {
        "crs_pred": round(float(pred[0]), 3),
        "crs_lower": None if not np.isfinite(lo[0]) else round(float(lo[0]), 3),
        "crs_upper": None if not np.isfinite(hi[0]) else round(float(hi[0]), 3),
        "interval_level": None if model.alpha is None else round(1.0 - float(model.alpha), 3),
        "crs_level": crs_level(pred, model.mcs_cut)[0],
        "crs_pred_sd": round(float(spread[0]), 3),
        "top_attention_regions": ", ".join(f"{est.region_names_[i]} ({att[i]:.3f})" for i in top),
    }


# --------------------------------------------------------------------------- group
def _mean_image(paths: Sequence[Path]) -> Any:
    """Voxel-wise mean of maps (resampled to the first map's grid if needed)."""
    import nibabel as nib
    from nilearn.image import resample_to_img

    ref = _load_img(paths[0])
    acc = np.zeros(ref.shape[:3], dtype=np.float64)
    for p in paths:
        img = _load_img(p)
        if img.shape[:3] != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=1e-4):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = resample_to_img(img, ref, interpolation="continuous", force_resample=True, copy_header=True)
        acc += np.nan_to_num(np.asarray(img.dataobj, dtype=np.float64))
    return nib.Nifti1Image((acc / len(paths)).astype(np.float32), ref.affine)


def group_analysis(scores_dir: str | os.PathLike, participants: str | os.PathLike | pd.DataFrame,
                   out_dir: str | os.PathLike, *, atlas: str | None = None,
                   bands: Sequence[tuple[int, int]] = ((0, 7), (8, 15), (16, 23)),
                   crs_model: str | os.PathLike | None = None,
                   features: Sequence[str] = ("anomaly_mean", "pet_z_mean"), fdr: float = 0.05,
                   atlas_img: Any = None, glass_brains: bool = True) -> dict[str, Path]:
    """Cohort-level association of regional anomaly with the CRS-R.

    Writes to ``out_dir``:

    * ``group_correlations.tsv``: per region and feature, Spearman rho with the CRS-R,
      p, Benjamini-Hochberg q and ``significant`` (q <= ``fdr``);
    * ``group_desc-crs<lo>to<hi>_stat-anomaly_statmap.nii.gz`` (+ glass brain): the
      voxel-wise mean anomaly map of the patients in each CRS-R band, and
      ``group_bands.tsv`` (band, n, participant ids);
    * ``group_feature-<f>_stat-rho_statmap.nii.gz`` (+ glass brain, signed): rho
      painted on the atlas regions;
    * with ``crs_model``: ``group_attention.tsv`` (cohort mean/SD attention per region)
      and ``group_stat-attention_statmap.nii.gz`` (+ glass brain).

    Parameters
    ----------
    scores_dir : path
    participants : path or DataFrame
    out_dir : path
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
    bags, y, _, atlas_name = _labelled_patients(participants, scores_dir, atlas)
    outputs: dict[str, Path] = {}
    _log(f"group: {len(y)} patients, atlas-{atlas_name}")

    corr = region_correlations(bags, y, features=features, fdr=fdr)
    outputs["correlations"] = write_tsv(corr, out / "group_correlations.tsv")

    map_paths = {pid: _anomaly_map(scores_dir, pid) for pid in bags.participant_ids}
    painter = _Painter(atlas_img if atlas_img is not None else atlas_name)
    ref_img = None
    band_rows = []
    for label, member in crs_bands(y, bands).items():
        pids = [pid for pid, m in zip(bags.participant_ids, member) if m]
        paths = [map_paths[p] for p in pids if map_paths[p] is not None]
        band_rows.append({"band": label, "n": len(pids), "n_maps": len(paths), "participant_ids": ",".join(pids)})
        if not paths:
            continue
        mean_img = _mean_image(paths)
        ref_img = ref_img if ref_img is not None else mean_img
        name = f"group_desc-crs{label}_stat-anomaly"
        outputs[f"band_{label}"] = save_image(mean_img, out / f"{name}_statmap.nii.gz")
        if glass_brains:
            plot_glass_brain(mean_img, out / f"{name}_glassbrain.png", title=f"Mean anomaly, CRS-R {label.replace('to', '-')} (n={len(paths)})")
    outputs["bands"] = write_tsv(pd.DataFrame(band_rows), out / "group_bands.tsv")

    labels = painter.labels_on(ref_img) if ref_img is not None else painter.native()
    if labels is not None:
        for feat in corr["feature"].unique():
            sub = corr[corr["feature"] == feat]
            values = {int(k): (0.0 if not np.isfinite(v) else float(v)) for k, v in zip(sub["index"], sub["rho"])}
            img = paint_regions(labels, values)
            tag = feat.replace("_", "")
            outputs[f"rho_{feat}"] = save_image(img, out / f"group_feature-{tag}_stat-rho_statmap.nii.gz")
            if glass_brains:
                plot_glass_brain(img, out / f"group_feature-{tag}_stat-rho_glassbrain.png",
                                 title=f"Spearman rho of {feat} with CRS-R", signed=True)

    if crs_model is not None:
        model = load_crs_model(crs_model)
        est = model.estimator
        aligned = bags.align(region_index=est.region_index_, feature_names=est.feature_names_,
                             global_feature_names=est.global_feature_names_)
        att = est.attention(aligned)
        R = att.shape[1]
        att_df = pd.DataFrame({"index": est.region_index_, "name": est.region_names_, "attention_mean": att.mean(0),
                               "attention_sd": att.std(0), "attention_rel": att.mean(0) * R, "n": len(att)})
        outputs["attention"] = write_tsv(att_df, out / "group_attention.tsv")
        if labels is not None:
            img = paint_regions(labels, dict(zip(est.region_index_.tolist(), att.mean(0).tolist())))
            outputs["attention_map"] = save_image(img, out / "group_stat-attention_statmap.nii.gz")
            if glass_brains:
                plot_glass_brain(img, out / "group_stat-attention_glassbrain.png", title="Cohort mean attention")
    _log(f"group: outputs written to {out}")
    return outputs
