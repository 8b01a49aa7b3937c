"""Benchmark of the CRS-R regressor: accuracy, localisation and run time.

Compares, with the same cross-validation folds and bootstrap draws:

* the MIL attention regressor with each loss (mse, huber, coral, corn, rank, kappa,
  soft, coral+rank), the identity link of the scalar head against the default log
  link (``mse-identity``), with label-distribution smoothing, and with each curriculum
  (confidence, self-paced) against the random-order control with the same growing
  training-set sizes;
* the three baselines: ridge regression on the flattened region features, the
  seven-parameter arousal x awareness model (:mod:`anomaly.crs.hypothesis`) and the
  training-fold mean, with the paired bootstrap difference of the primary MIL
  configuration's MAE against each;
* the oracle noise floor: MAE of the noise-free ``crs_true`` against the noisy labels.

Localisation: AUROC of ranking the atlas regions by the cohort mean of the
*out-of-fold* attention (no patient's attention comes from a model trained on them),
and by the group correlation |rho| of pet_z_mean / anomaly_mean with the CRS-R, for
telling the causal regions from the others.

Inputs
------
``--synthetic`` (default): region tables simulated by
:func:`anomaly.crs.synthetic.simulate_region_bags` (50 patients, the 136
Neuromorphometrics regions, 18 features shaped like `anomaly score`'s tables; the
generating model is documented there). Otherwise a scored cohort: ``--scores-dir``
(output of `anomaly score`), ``--participants`` (its participants.tsv, with ``crs``) and
``--truth``: the simulator's ``derivatives/simulation`` folder, or its ``truth.tsv``
(``participant_id``, ``crs_true``, ``crs``) with ``causal_regions.json`` next to it (a
dict with ``atlas`` and ``regions``: the causal region names, matched exactly,
case-insensitively, to the region tables; its atlas is used unless ``--atlas``).

Every model sees the columns ``--features`` and ``--global-features`` choose, as in
``anomaly fit-crs`` (default: its defaults, ``anomaly_mean`` +
``global_cortical_pet_percent``; ``--features all --global-features all`` gives all,
which suits the synthetic tables, whose CRS-R is set by PET z).

Targets (issue #5, defined in :mod:`benchmarks._targets`): MIL MAE <= 1.3 x noise floor
and below ridge; Spearman >= 0.8; localisation AUROC >= 0.9; LOO on 50 patients < 2 min.
:func:`check_targets` evaluates them for the default configuration (``mse``, as
``anomaly fit-crs``), or the first one run.

Usage::

    python -m benchmarks.crs                    # full LOO table, synthetic cohort
    python -m benchmarks.crs --features all --global-features all --jobs 2   # README table
    python -m benchmarks.crs --quick            # 5-fold CV, fewer configurations
    python -m benchmarks.crs --configs mse,coral --cv kfold:5x2
    python -m benchmarks.crs --scores-dir scores --participants bids/participants.tsv \\
        --truth bids/derivatives/simulation --cv kfold:5 --configs mse,coral
    python -m benchmarks.crs --quick --json crs.json --figure crs_scatter.png
    python -m benchmarks.crs --cv kfold:5 --repeats 3 --configs mae,mae-coupled --select mae,mse

Repeated, nested cross-validation: ``--repeats R`` repeats the outer K-fold with R fold
seeds; every configuration's MAE is reported per repeat (mean and SD over repeats), and
each one's paired MAE difference to the best baseline is bootstrapped over patients
with all repeats' predictions (the metric averaged over repeats in every draw).
``--select A,B`` adds a row whose configuration is chosen inside every outer training
fold by an inner CV (``--inner-cv``) among the configurations A, B...: the choice (of
the loss, for instance) is then validated rather than made on the test patients.

``run(...)`` returns the table, the out-of-fold predictions and the targets as data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from anomaly.constants import CRS_MAX
from anomaly.crs import (
    MILRegressor,
    cross_validate,
    load_region_bags,
    paired_differences,
    region_correlations,
    select_features,
)
from anomaly.crs.conformal import missing_groups, modality_groups
from anomaly.crs.synthetic import simulate_region_bags
from anomaly.crs.validation import BASELINES
from benchmarks._common import save_figure, write_json
from benchmarks._targets import crs_targets

CONFIGS: dict[str, dict] = {
    "mse": {"loss": "mse"},
    "mse-identity": {"loss": "mse", "link": "identity"},
    "huber": {"loss": "huber"},
    "coral": {"loss": "coral"},
    "corn": {"loss": "corn"},
    "rank": {"loss": "rank"},
    "kappa": {"loss": "kappa"},
    "soft": {"loss": "soft"},
    "coral+rank": {"loss": "coral+rank"},
    "mse+lds": {"loss": "mse", "lds": True},
    "mse+cur-confidence": {"loss": "mse", "curriculum": "confidence"},
    "mse+cur-self-paced": {"loss": "mse", "curriculum": "self-paced"},
    "mse+cur-random": {"loss": "mse", "curriculum": "random"},
    "mae": {"loss": "mae"},
    # The signed default before it was cut to two channels and 100 epochs.
    "mae-4ch": {"loss": "mae", "channels": 4, "epochs": 300},
    "mae-coupled": {"loss": "mae", "global_coupling": True},
    "mse-coupled": {"loss": "mse", "global_coupling": True},
    "mse-pooled": {"loss": "mse", "standardise": "pooled"},
    "mse-geometry": {"loss": "mse", "region_prior": "geometry"},
    "mse-aa": {"loss": "mse", "link": "arousal-awareness"},
    "mae-aa": {"loss": "mae", "link": "arousal-awareness"},
    "mse-gated": {"loss": "mse", "architecture": "gated", "standardise": "pooled"},
    "mse-gated-rs": {"loss": "mse", "architecture": "gated"},
    # The default before issue 13 (run it with --features anomaly_mean to compare).
    "previous": {"loss": "mse", "architecture": "gated", "standardise": "pooled", "modality_dropout": 0.0},
}
QUICK = ["mae", "mse", "mse-geometry", "mse-gated", "coral", "rank", "soft", "mse+lds", "mse+cur-confidence", "mse+cur-random"]


def truth_paths(truth: str | Path) -> tuple[Path, Path]:
    """``truth.tsv`` and ``causal_regions.json`` from the folder or the TSV path."""
    truth = Path(truth)
    tsv = truth / "truth.tsv" if truth.is_dir() else truth
    if not tsv.is_file():
        raise FileNotFoundError(f"--truth: no truth table {tsv} (give derivatives/simulation or its truth.tsv)")
    return tsv, tsv.with_name("causal_regions.json")


def causal_mask(region_names: list[str], spec) -> tuple[np.ndarray, list[str]]:
    """Causal-region mask from ``causal_regions.json`` content (dict or list of names).

    Names match the region tables exactly, case-insensitively; returns the mask and the
    listed names that no region table row has (e.g. regions too small for the grid).
    """
    names = spec.get("regions", []) if isinstance(spec, dict) else list(spec or [])
    wanted = {str(n).lower() for n in names}
    mask = np.array([r.lower() in wanted for r in region_names])
    have = {r.lower() for r in region_names}
    return mask, [str(n) for n in names if str(n).lower() not in have]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_inputs(*, scores_dir=None, participants=None, truth=None, atlas=None, n_patients: int = 50,
                seed: int = 0) -> dict:
    """Bags, noisy labels, label SDs, noise-free scores and the causal-region mask.

    Returns a dict: ``bags``, ``y``, ``y_sd`` (None when unknown), ``crs_true``,
    ``causal`` (bool per region), ``source`` and ``causal_missing`` (listed causal
    regions absent from the tables).
    """
    if scores_dir is None:
        c = simulate_region_bags(n_patients, seed=seed)
        return {"bags": c.bags, "y": c.crs, "y_sd": c.crs_sd, "crs_true": c.crs_true, "causal": c.causal,
                "source": f"synthetic region tables (simulate_region_bags, n={n_patients}, seed={seed})",
                "causal_missing": []}
    return load_scored(scores_dir, participants, truth, atlas)


def _scored_bags(scores_dir, atlas, json_atlas, causal_json: Path):
    """Region bags of the scored cohort, on ``atlas`` or that of ``causal_regions.json``."""
    from anomaly.io import AnomalyInputError

    try:
        bags = load_region_bags(scores_dir, atlas=atlas or json_atlas)
    except AnomalyInputError:
        if atlas or not json_atlas:
            raise
        log(f"warning: no atlas-{json_atlas} region tables (the atlas of {causal_json.name}); using the default")
        bags = load_region_bags(scores_dir)
    if json_atlas and bags.atlas and str(bags.atlas).lower() != str(json_atlas).lower():
        log(f"warning: region tables use atlas {bags.atlas!r}, {causal_json.name} lists {json_atlas!r} regions")
    return bags


def load_scored(scores_dir, participants, truth, atlas) -> dict:
    """:func:`load_inputs` for a scored cohort (region tables, participants.tsv, truth)."""
    from anomaly.io import read_participants

    tsv, causal_json = truth_paths(truth)
    spec = json.loads(causal_json.read_text()) if causal_json.is_file() else {}
    if not causal_json.is_file():
        log(f"warning: no {causal_json}: localisation AUROC not computed")
    parts = read_participants(participants)
    parts = parts[parts["crs"].notna()]
    table = pd.read_csv(tsv, sep="\t", na_values=["n/a"], dtype={"participant_id": str})
    lacking = {"participant_id", "crs_true"} - set(table.columns)
    if lacking:
        raise ValueError(f"{tsv}: no column(s) {', '.join(sorted(lacking))}")
    table["participant_id"] = [p if p.startswith("sub-") else f"sub-{p}" for p in table["participant_id"]]
    table = table.set_index("participant_id")
    json_atlas = spec.get("atlas") if isinstance(spec, dict) else None
    bags = _scored_bags(scores_dir, atlas, json_atlas, causal_json)
    labelled = set(parts.participant_id)
    known = set(table.index[table["crs_true"].notna()])
    keep = [p for p in bags.participant_ids if p in labelled and p in known]
    dropped = [p for p in bags.participant_ids if p in labelled and p not in known]
    if dropped:
        log(f"warning: {len(dropped)} labelled subject(s) without crs_true in {tsv}, left out: {', '.join(dropped[:5])}")
    if len(keep) < 5:
        raise ValueError(f"{scores_dir}: only {len(keep)} patient(s) with a region table, a crs and a crs_true")
    bags = bags.subset([bags.participant_ids.index(p) for p in keep])
    parts = parts.set_index("participant_id").loc[keep]
    y = parts["crs"].to_numpy(float)
    if "crs" in table.columns:
        differ = np.flatnonzero(table.loc[keep, "crs"].to_numpy(float) != y)
        if differ.size:
            log(f"warning: crs differs between {participants} and {tsv} for {differ.size} patient(s), "
                f"e.g. {keep[differ[0]]}: the labels of {participants} are used")
    crs_true = table.loc[keep, "crs_true"].to_numpy(float)
    causal, missing = causal_mask(bags.region_names, spec)
    if missing:
        log(f"warning: {len(missing)} causal region(s) of {causal_json.name} not in the region tables: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    sd = parts["crs_sd"].to_numpy(float) if "crs_sd" in parts.columns else None
    if sd is not None and not np.isfinite(sd).any():
        sd = None  # as `anomaly fit-crs`: no crs_sd at all means unknown, not NaN for everyone
    oracle_columns = [c for c in ORACLE_COLUMNS if c in table.columns]
    oracle = table.loc[keep, oracle_columns].to_numpy(float) if len(oracle_columns) == len(ORACLE_COLUMNS) else None
    return {"bags": bags, "y": y, "y_sd": sd, "crs_true": crs_true, "causal": causal, "oracle_inputs": oracle,
            "source": f"scored cohort {scores_dir} (truth {tsv})", "causal_missing": missing}


#: Simulation truth that the CRS-R model is a function of (truth.tsv of a simulated cohort).
ORACLE_COLUMNS = ("global_metabolism", "damage_brainstem", "damage_thalamus", "damage_posteromedial",
                  "damage_frontal")


def oracle_mae(inputs: np.ndarray | None, y: np.ndarray, cv: str, seed: int) -> float | None:
    """Out-of-fold MAE of a ridge on the simulation's true causes, with the benchmark's folds.

    A reference, not a model: with perfect features (the global level and the damage of
    the four families that the simulator's CRS-R is made of) and the same number of
    labels, how close to the noise floor a linear model gets. None without that truth.

    Parameters
    ----------
    inputs : ndarray, shape (N, 5) or None
        :data:`ORACLE_COLUMNS` of the patients.
    y : ndarray, shape (N,)
        Observed CRS-R.
    cv : str
        The benchmark's CV (``make_splits``); the MAE is averaged over its repeats.
    seed : int
    """
    if inputs is None or not np.isfinite(inputs).all():
        return None
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from anomaly.crs.validation import make_splits

    maes = []
    for folds in make_splits(len(y), cv, seed=seed):
        pred = np.empty(len(y))
        for train, test in folds:
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
            pred[test] = model.fit(inputs[train], y[train]).predict(inputs[test])
        maes.append(float(np.mean(np.abs(np.clip(pred, 0, 23) - y))))
    return float(np.mean(maes))


def cell(df: pd.DataFrame, model: str, metric: str) -> str:
    r = df[(df.model == model) & (df.metric == metric)].iloc[0]
    return f"{r.estimate:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"


METRIC_COLUMNS = ("mae", "rmse", "spearman", "qwk", "auroc")
SHOW = ["model", "mae", "mae/floor", "rmse", "spearman", "qwk", "auroc", "loc_auroc", "seconds", "cpu_s"]


def config_names(configs: list[str] | None, quick: bool) -> list[str]:
    """The configurations to run: those given, else :data:`QUICK` or all; unknown names refused."""
    names = list(configs) if configs else (QUICK if quick else list(CONFIGS))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    return names


def run(*, configs: list[str] | None = None, cv: str = "loo", quick: bool = False, scores_dir=None,
        participants=None, truth=None, atlas=None, n_patients: int = 50, seed: int = 0, n_bootstrap: int = 1000,
        params: dict | None = None, threads: int | None = 1, features=None, global_features=None,
        jobs: int = 1, new_cohort: tuple | None = None, repeats: int = 1, select: list[str] | None = None,
        inner_cv: str = "kfold:3") -> dict:
    """Run the benchmark and return its results as data.

    Parameters mirror the command line (``quick``: ``kfold:5`` instead of ``loo`` and
    the :data:`QUICK` configurations unless given). ``threads`` sets
    ``torch.set_num_threads`` (None: leave it). ``features`` and ``global_features``
    choose the columns every model (MIL and ridge) sees, as ``anomaly fit-crs
    --features / --global-features`` (default: its defaults). ``jobs``: folds fitted in
    parallel processes. ``new_cohort``: (scores_dir, participants, truth) of another
    scored cohort whose patients check the intervals of the model fitted on this one
    (default for a scored cohort: no interval check; for the synthetic one: 200 new
    synthetic patients). ``repeats``: the outer K-fold repeated with this many fold
    seeds. ``select``: configurations among which a nested inner CV (``inner_cv``)
    chooses in every outer training fold (one more row, ``MIL select(...)``).

    Returns
    -------
    dict
        ``settings``, ``source``, ``n``, ``n_regions``, ``n_causal``, ``n_features``,
        ``causal_missing``, ``cv``, ``noise_floor``, ``table`` (DataFrame, one row per
        model: metric cells "estimate [CI]", ``mae_est``, ``mae/floor``, ``spearman_est``,
        ``loc_auroc``, ``seconds``, ``cpu_s``), ``loc_corr`` (group-correlation
        localisation AUROC per feature), ``predictions`` (DataFrame: participant_id, crs,
        crs_true, crs_pred_ridge, crs_pred_mean and crs_pred_mil_<config> out of fold),
        ``attention`` (dict config -> cohort-mean out-of-fold attention per region),
        ``region_names``, ``causal``, ``targets`` (:func:`check_targets`),
        ``repeat_predictions`` (column -> (R, N) out-of-fold predictions per repeat),
        ``repeats`` (:func:`repeat_table`) and ``selected`` (how often the nested CV chose
        each configuration; empty without ``select``).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    cv = repeated_cv("kfold:5" if quick and cv == "loo" else cv, repeats)
    names = config_names(configs, quick)
    if select:
        config_names(select, False)  # unknown names refused before any fitting
    extra = dict(params or {})
    data = load_inputs(scores_dir=scores_dir, participants=participants, truth=truth, atlas=atlas,
                       n_patients=n_patients, seed=seed)
    all_bags, y, y_sd, crs_true, causal = data["bags"], data["y"], data["y_sd"], data["crs_true"], data["causal"]
    bags = select_features(all_bags, features, global_features)
    floor = float(np.mean(np.abs(crs_true - y)))
    log(f"cohort: {len(y)} patients, {len(bags.region_names)} regions ({int(causal.sum())} causal), "
        f"features {', '.join(bags.feature_names)} + {', '.join(bags.global_feature_names) or 'no'} subject-level; "
        f"cv={cv}; noise floor MAE={floor:.3f}")
    can_localise = bool(causal.any() and not causal.all())

    predictions = pd.DataFrame({"participant_id": list(bags.participant_ids), "crs": y, "crs_true": crs_true})
    rows, attention, baselines, cv_plus, oof = _run_configs(
        names, bags, y, y_sd, causal if can_localise else None, predictions, cv=cv, seed=seed,
        n_bootstrap=n_bootstrap, extra=extra, jobs=jobs)
    selected = {}
    if select:
        row, oof_sel, attention[row["model"]], selected = _run_selection(
            select, bags, y, y_sd, causal if can_localise else None, predictions, cv=cv, inner_cv=inner_cv,
            seed=seed, n_bootstrap=n_bootstrap, extra=extra, jobs=jobs)
        rows.append(row)
        oof.update(oof_sel)
    table = _final_table(rows, baselines, floor)
    loc_corr = _correlation_localisation(all_bags, y, causal) if can_localise else {}
    result = {
        "settings": {"configs": names, "cv": cv, "quick": quick, "scores_dir": None if scores_dir is None else str(scores_dir),
                     "participants": None if participants is None else str(participants),
                     "truth": None if truth is None else str(truth), "atlas": atlas, "n_patients": n_patients,
                     "seed": seed, "n_bootstrap": n_bootstrap, "params": extra, "threads": threads, "jobs": jobs,
                     "repeats": repeats, "select": list(select or []), "inner_cv": inner_cv if select else None,
                     "features": list(bags.feature_names), "global_features": list(bags.global_feature_names)},
        "source": data["source"], "n": len(y), "n_regions": len(bags.region_names), "n_causal": int(causal.sum()),
        "n_features": len(bags.feature_names), "feature_names": list(bags.feature_names),
        "global_feature_names": list(bags.global_feature_names), "causal_missing": data["causal_missing"], "cv": cv,
        "noise_floor": floor, "table": table, "loc_corr": loc_corr, "predictions": predictions,
        "attention": attention, "region_names": list(bags.region_names), "causal": causal.tolist(),
        "repeat_predictions": oof, "selected": selected,
        "oracle_mae": oracle_mae(data.get("oracle_inputs"), y, cv, seed),
    }
    result["differences"] = baseline_differences(result, n_bootstrap=n_bootstrap, seed=seed)
    result["repeats"] = repeat_table(oof, y, n_bootstrap=n_bootstrap, seed=seed)
    result["by_pet"] = mae_by_pet(predictions, bags)
    if new_cohort is not None:
        new = load_scored(*new_cohort, atlas)
        new_bags = select_features(new["bags"], list(bags.feature_names), list(bags.global_feature_names) or "none")
        result["intervals"] = interval_check(cv_plus, bags, y, y_sd, new=(new_bags, new["y"]))
        result["settings"]["new_cohort"] = [str(p) for p in new_cohort]
    elif scores_dir is None:
        result["intervals"] = interval_check(cv_plus, bags, y, y_sd, seed=seed)
    else:
        result["intervals"] = None
    result["targets"] = check_targets(result)
    return result


def repeated_cv(cv: str, repeats: int) -> str:
    """``cv`` with its K-fold repeated ``repeats`` times (``kfold:K`` -> ``kfold:KxR``).

    Leave-one-out has no fold seed to repeat; ``kfold:KxR`` already names its repeats.
    """
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    if repeats == 1:
        return cv
    spec = str(cv).strip().lower()
    if not spec.startswith("kfold:") or "x" in spec:
        raise ValueError(f"--repeats needs --cv kfold:K (got {cv!r}): leave-one-out has no folds to reshuffle")
    return f"{spec}x{repeats}"


def _mil_row(label: str, res, causal, wall: float, cpu: float) -> tuple[dict, np.ndarray]:
    """A table row of one cross-validated MIL and its cohort-mean out-of-fold attention."""
    attention = res.attention.mean(0)
    loc = roc_auc_score(causal, attention) if causal is not None else float("nan")
    row = {"model": label, **{m: cell(res.metrics, "mil", m) for m in METRIC_COLUMNS},
           "mae_est": res.metric("mil", "mae"), "spearman_est": res.metric("mil", "spearman"),
           "qwk_est": res.metric("mil", "qwk"), "loc_auroc": loc, "seconds": wall, "cpu_s": cpu}
    return row, attention


def _run_configs(names, bags, y, y_sd, causal, predictions: pd.DataFrame, *, cv, seed, n_bootstrap, extra,
                 jobs) -> tuple[list[dict], dict, object, object, dict]:
    """Cross-validate each MIL configuration (the baselines with the first).

    Adds the out-of-fold predictions to ``predictions``; ``causal`` is None when the
    regions cannot be ranked (no causal region, or all). Returns the table rows, the
    cohort-mean attention per configuration, the first run's result (baselines), the
    primary configuration's CV+ material and the per-repeat out-of-fold predictions
    (``crs_pred_<model>`` -> (R, N)).
    """
    rows, attention, oof = [], {}, {}
    baselines = cv_plus = None
    for i, name in enumerate(names):
        mil_params = {**CONFIGS[name], "seed": seed, **extra}
        t0, c0 = time.perf_counter(), time.process_time()
        res = cross_validate(bags, y, mil_params, y_sd=y_sd, cv=cv, seed=seed, n_bootstrap=n_bootstrap,
                             baselines=baselines is None, n_jobs=jobs, progress=False,
                             keep_fold_models=name == _primary(names))
        if res.cv_plus is not None:
            cv_plus = (res.cv_plus, res.conformal_quantile, mil_params)
        wall = time.perf_counter() - t0
        # The machine may be shared: CPU time is the fairer cost (this process only:
        # with jobs > 1 the folds' CPU time is spent in worker processes).
        cpu = time.process_time() - c0
        if baselines is None:
            baselines = res
            for base in BASELINES:
                predictions[f"crs_pred_{base}"] = _aligned(res.predictions, predictions, f"crs_pred_{base}")
                oof[f"crs_pred_{base}"] = res.repeat_predictions[base]
        predictions[f"crs_pred_mil_{name}"] = _aligned(res.predictions, predictions, "crs_pred_mil")
        oof[f"crs_pred_mil_{name}"] = res.repeat_predictions["mil"]
        row, attention[name] = _mil_row(f"MIL {name}", res, causal, wall, cpu)
        rows.append(row)
        log(f"[{i + 1}/{len(names)}] {name}: MAE {row['mae']}, loc {row['loc_auroc']:.3f}, {wall:.0f} s wall, "
            f"{cpu:.0f} s CPU")
    return rows, attention, baselines, cv_plus, oof


def _run_selection(select, bags, y, y_sd, causal, predictions: pd.DataFrame, *, cv, inner_cv, seed, n_bootstrap,
                   extra, jobs) -> tuple[dict, dict, np.ndarray, dict]:
    """Nested CV: in every outer training fold an inner CV chooses among the ``select`` configurations.

    Adds ``crs_pred_mil_select`` to ``predictions``. Returns the table row, the
    per-repeat out-of-fold predictions, the cohort-mean attention and how often each
    configuration was chosen (over all outer folds and repeats).
    """
    candidates = [dict(CONFIGS[name]) for name in select]
    # Every candidate sets the same keys (the others at the regressor's defaults), so
    # that a choice never inherits a setting of the candidate tried before it.
    keys = sorted({k for c in candidates for k in c})
    defaults = MILRegressor().get_params()
    candidates = [{k: c.get(k, defaults[k]) for k in keys} for c in candidates]
    t0, c0 = time.perf_counter(), time.process_time()
    res = cross_validate(bags, y, {"seed": seed, **extra}, y_sd=y_sd, cv=cv, seed=seed, n_bootstrap=n_bootstrap,
                         baselines=False, n_jobs=jobs, progress=False, param_grid=candidates, inner_cv=inner_cv)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    label = f"MIL select({','.join(select)})"
    row, attention = _mil_row(label, res, causal, wall, cpu)
    chosen = [select[candidates.index(p)] for p in res.best_params]
    counts = {name: chosen.count(name) for name in select}
    predictions["crs_pred_mil_select"] = _aligned(res.predictions, predictions, "crs_pred_mil")
    log(f"[select] {label}: MAE {row['mae']}, chosen {counts}, {wall:.0f} s wall, {cpu:.0f} s CPU")
    return row, {"crs_pred_mil_select": res.repeat_predictions["mil"]}, attention, counts


def interval_check(cv_plus, bags, y, y_sd, *, n_new: int = 200, seed: int = 0,
                   new: tuple | None = None) -> pd.DataFrame:
    """Coverage and mean width of the ~90% intervals on new patients.

    ``cv_plus`` is the primary configuration's (CV+ intervals, conformal radius, MIL
    parameters). The new patients are ``new`` (bags, labels: another scored cohort) or
    come from the synthetic generator with another seed; the symmetric interval (final
    model +- the CV residual quantile, the previous method) is shown beside CV+. Rows:
    every new patient, and the new patients without PET.
    """
    intervals, radius, params = cv_plus
    final = MILRegressor(**params).fit(bags, y, y_sd)
    if new is None:
        cohort = simulate_region_bags(n_new, seed=seed + 1000)
        new_bags = select_features(cohort.bags, list(bags.feature_names), list(bags.global_feature_names) or "none")
        new_y = cohort.crs
    else:
        new_bags, new_y = new
    pred = final.predict(new_bags)
    cv_lo, cv_hi = intervals.interval(new_bags)
    cv_lo, cv_hi = np.minimum(cv_lo, pred), np.maximum(cv_hi, pred)
    sym_lo, sym_hi = np.clip(pred - radius, 0, CRS_MAX), np.clip(pred + radius, 0, CRS_MAX)
    no_pet = np.array(["pet" in p for p in missing_groups(new_bags, modality_groups(new_bags))])
    rows = []
    for method, lo, hi in (("CV+", cv_lo, cv_hi), ("symmetric (previous)", sym_lo, sym_hi)):
        for who, keep in (("all new patients", np.ones_like(no_pet)), ("without PET", no_pet)):
            if keep.any():
                inside = (new_y >= lo) & (new_y <= hi)
                rows.append({"interval": method, "patients": who, "n": int(keep.sum()),
                             "coverage": float(inside[keep].mean()), "mean_width": float((hi - lo)[keep].mean())})
    return pd.DataFrame(rows)


def mae_by_pet(predictions: pd.DataFrame, bags) -> pd.DataFrame:
    """Out-of-fold MAE of every model among the patients with PET and those without."""
    no_pet = np.array(["pet" in p for p in missing_groups(bags, modality_groups(bags))])
    y = predictions["crs"].to_numpy(float)
    rows = []
    for col in [c for c in predictions.columns if c.startswith("crs_pred_")]:
        err = np.abs(predictions[col].to_numpy(float) - y)
        for who, keep in (("with PET", ~no_pet), ("without PET", no_pet)):
            if keep.any():
                rows.append({"model": col.removeprefix("crs_pred_"), "patients": who, "n": int(keep.sum()),
                             "mae": float(err[keep].mean())})
    return pd.DataFrame(rows)


def _final_table(rows: list[dict], baselines, floor: float) -> pd.DataFrame:
    """The MIL rows, then the baselines and the oracle noise floor; ``mae/floor`` added."""
    rows = list(rows)
    for base in BASELINES:
        rows.append({"model": base, **{m: cell(baselines.metrics, base, m) for m in METRIC_COLUMNS},
                     "mae_est": baselines.metric(base, "mae"), "spearman_est": baselines.metric(base, "spearman"),
                     "qwk_est": baselines.metric(base, "qwk"), "loc_auroc": float("nan"),
                     "seconds": baselines.seconds[base], "cpu_s": float("nan")})
    rows.append({"model": "oracle (crs_true)", **{m: "" for m in METRIC_COLUMNS[1:]},
                 "mae": f"{floor:.2f}", "mae_est": floor, "spearman_est": float("nan"), "loc_auroc": float("nan"),
                 "seconds": 0.0, "cpu_s": float("nan")})
    table = pd.DataFrame(rows)
    table["mae/floor"] = table["mae_est"] / floor
    return table


def _correlation_localisation(bags, y: np.ndarray, causal: np.ndarray) -> dict[str, float]:
    """AUROC of ranking the regions by |Spearman rho| of a feature with the CRS-R."""
    corr = region_correlations(bags, y, features=("pet_z_mean", "anomaly_mean"))
    loc_corr = {}
    for feat in ("pet_z_mean", "anomaly_mean"):
        sub = corr[corr.feature == feat]
        if len(sub):
            score = np.nan_to_num(np.abs(sub["rho"].to_numpy()))  # rows follow the bags' region order
            loc_corr[feat] = roc_auc_score(causal, score)
    return loc_corr


def _aligned(source: pd.DataFrame, target: pd.DataFrame, column: str) -> np.ndarray:
    """``source[column]`` in the participant order of ``target``."""
    if "participant_id" in source.columns:
        return source.set_index("participant_id")[column].reindex(target["participant_id"]).to_numpy(float)
    return source[column].to_numpy(float)


def primary_config(result: dict) -> str:
    """The configuration the targets are checked on: mae (fit-crs's default) or the first run."""
    return _primary(result["settings"]["configs"])


def _primary(names: list[str]) -> str:
    return "mae" if "mae" in names else names[0]


def check_targets(result: dict) -> list[dict]:
    """Issue #5 targets for the primary configuration (:func:`benchmarks._targets.crs_targets`)."""
    t = result["table"].set_index("model")
    name = primary_config(result)
    return crs_targets(t.loc[f"MIL {name}"].to_dict(), name=name, ridge_mae=float(t.loc["ridge", "mae_est"]),
                       noise_floor=result["noise_floor"], cv=result["cv"], n=result["n"],
                       differences=result.get("differences"), intervals=result.get("intervals"))


def baseline_differences(result: dict, *, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """Paired bootstrap MAE and QWK differences of the primary MIL configuration against each baseline.

    With repeated CV every repeat's predictions enter (the metric averaged over repeats
    in each draw), not the predictions averaged over repeats (an ensemble no single
    model is).
    """
    oof = result["repeat_predictions"]
    preds = {"mil": oof[f"crs_pred_mil_{primary_config(result)}"],
             **{base: oof[f"crs_pred_{base}"] for base in BASELINES}}
    return paired_differences(result["predictions"]["crs"].to_numpy(float), preds, n_bootstrap=n_bootstrap, seed=seed)


def repeat_table(oof: dict, y: np.ndarray, *, n_bootstrap: int, seed: int) -> pd.DataFrame:
    """MAE per repeat (mean, SD, range) of every model, and each MIL's paired difference to the best baseline.

    Parameters
    ----------
    oof : dict
        ``crs_pred_<model>`` -> (R, N) out-of-fold predictions of each repeat.
    y : ndarray (N,)
        Labels.
    n_bootstrap, seed : int
        Paired bootstrap over patients (:func:`anomaly.crs.paired_differences`, all
        repeats in every draw).

    Returns
    -------
    DataFrame
        model, repeats, mae_mean, mae_sd (ddof 1; 0 with one repeat), mae_min, mae_max,
        and for the MIL rows: best_baseline (lowest mean MAE), diff_best (MIL minus it),
        diff_ci_low, diff_ci_high (95%).
    """
    mae = {col.removeprefix("crs_pred_"): np.abs(p - y[None]).mean(1) for col, p in oof.items()}
    best = min(BASELINES, key=lambda b: mae[b].mean())
    rows = []
    for model, per_repeat in mae.items():
        row = {"model": model, "repeats": per_repeat.size, "mae_mean": per_repeat.mean(),
               "mae_sd": per_repeat.std(ddof=1) if per_repeat.size > 1 else 0.0,
               "mae_min": per_repeat.min(), "mae_max": per_repeat.max()}
        if model not in BASELINES:
            d = paired_differences(y, {model: oof[f"crs_pred_{model}"], best: oof[f"crs_pred_{best}"]},
                                   reference=model, metrics=("mae",), n_bootstrap=n_bootstrap, seed=seed).iloc[0]
            row.update(best_baseline=best, diff_best=d.difference, diff_ci_low=d.ci_low, diff_ci_high=d.ci_high)
        rows.append(row)
    return pd.DataFrame(rows)


def text_table(result: dict) -> str:
    """The table as fixed-width text (the command line's output)."""
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        return result["table"][SHOW].to_string(index=False, float_format=lambda v: f"{v:.2f}")


NUMERIC_COLUMNS = ("mae_est", "mae/floor", "loc_auroc", "seconds", "cpu_s")


def markdown(result: dict) -> str:
    """Header lines and the table in Markdown, from :func:`run`'s result or its JSON."""
    def fmt(v):
        if isinstance(v, float):
            return "" if not np.isfinite(v) else f"{v:.2f}"
        return str(v)

    # from JSON: records, with null for NaN
    table = pd.DataFrame(result["table"]).astype({c: float for c in NUMERIC_COLUMNS}, errors="ignore")

    lines = [f"Cohort: {result['source']}; {result['n']} patients, {result['n_regions']} regions "
             f"({result['n_causal']} causal); features {', '.join(result.get('feature_names', []))} + "
             f"{', '.join(result.get('global_feature_names', [])) or 'no'} subject-level; cv={result['cv']}; "
             f"noise floor MAE (crs_true vs label) {result['noise_floor']:.3f}.", "",
             "Cells: estimate [95% bootstrap CI]. loc_auroc: causal regions ranked by the cohort-mean "
             "out-of-fold attention. seconds: CV wall time incl. bootstrap; cpu_s: CPU time of the "
             f"benchmark process ({result['settings'].get('jobs', 1)} fold job(s)).", "",
             "| " + " | ".join(SHOW) + " |", "|" + "---|" * len(SHOW)]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(fmt(r[c]) for c in SHOW) + " |")
    if result["loc_corr"]:
        lines += ["", "Group-correlation localisation AUROC (|Spearman rho| of the feature with the CRS-R): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in result["loc_corr"].items())]
    if result["causal_missing"]:
        lines += ["", f"Causal regions missing from the region tables: {', '.join(result['causal_missing'])}"]
    if result.get("repeats") is not None:
        lines += ["", ("MAE over the CV's repeats (mean +- SD, range) and, for each MIL, minus the best baseline "
                       "(paired bootstrap over patients, all repeats, 95%):"), "",
                  "| model | repeats | MAE | range | minus best baseline |", "|---|---|---|---|---|"]
        for r in pd.DataFrame(result["repeats"]).to_dict(orient="records"):
            diff = r.get("diff_best")
            versus = ("" if diff is None or not np.isfinite(diff) else
                      f"{diff:+.2f} [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}] vs {r['best_baseline']}")
            lines.append(f"| {r['model']} | {r['repeats']} | {r['mae_mean']:.2f} +- {r['mae_sd']:.2f} | "
                         f"{r['mae_min']:.2f}-{r['mae_max']:.2f} | {versus} |")
    if result.get("oracle_mae") is not None:
        lines += ["", (f"Oracle reference (ridge on the simulation's true global level and family damage, same "
                       f"folds): MAE {result['oracle_mae']:.2f} = {result['oracle_mae'] / result['noise_floor']:.2f} "
                       "x the noise floor: what perfect features and this many labels give a linear model.")]
    if result.get("selected"):
        lines += ["", "Nested selection chose: " + ", ".join(f"{k} {v}x" for k, v in result["selected"].items())]
    return "\n".join(lines)


def plot_scatter(result: dict, path: str | Path, config: str | None = None) -> Path:
    """Out-of-fold predicted vs true CRS-R (MIL and ridge), with the identity line.

    Left: against the noisy label the models were trained and scored on; right: against
    the noise-free ``crs_true``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = config or primary_config(result)
    p = result["predictions"]
    t = result["table"].set_index("model")
    values = p[[c for c in p.columns if c.startswith("crs")]].to_numpy(float)
    lo, hi = min(-0.5, np.nanmin(values) - 0.5), max(23.5, np.nanmax(values) + 0.5)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), dpi=110, sharey=True)
    try:
        for ax, truth, label in ((axes[0], "crs", "CRS-R label (noisy, used for training and metrics)"),
                                 (axes[1], "crs_true", "noise-free CRS-R (crs_true)")):
            x = p[truth].to_numpy(float)
            for col, colour, marker, text in ((f"crs_pred_mil_{name}", "tab:orange", "o", f"MIL {name}"),
                                              ("crs_pred_ridge", "tab:blue", "s", "ridge")):
                pred = p[col].to_numpy(float)
                mae = float(np.nanmean(np.abs(pred - x)))
                ax.scatter(x, pred, s=22, alpha=0.75, color=colour, marker=marker, edgecolor="none",
                           label=f"{text} (MAE {mae:.2f})")
            ax.plot([0, 23], [0, 23], color="0.3", lw=1, ls="--", label="identity")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.set_aspect("equal")
            ax.set_xlabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="lower right", framealpha=0.6)
        axes[0].set_ylabel("out-of-fold predicted CRS-R")
        mil = t.loc[f"MIL {name}"]
        fig.suptitle(f"CRS-R, {result['n']} patients, cv={result['cv']}: MIL {name} MAE {mil['mae']}, "
                     f"ridge {t.loc['ridge', 'mae']}; noise floor {result['noise_floor']:.2f}", fontsize=9)
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", action="store_true", help="simulated region tables (default without --scores-dir)")
    ap.add_argument("--scores-dir", help="output folder of `anomaly score` on a simulated cohort")
    ap.add_argument("--participants", help="participants.tsv of that cohort")
    ap.add_argument("--truth", help="its derivatives/simulation folder, or the truth.tsv in it "
                                    "(causal_regions.json next to it)")
    ap.add_argument("--atlas", help="atlas of the region tables (default: that of causal_regions.json)")
    ap.add_argument("--n-patients", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cv", default="loo")
    ap.add_argument("--repeats", type=int, default=1,
                    help="repeat the outer K-fold with this many fold seeds (needs --cv kfold:K; default 1)")
    ap.add_argument("--select", help="comma-separated configurations among which a nested inner CV chooses in "
                                     "every outer training fold (one more row)")
    ap.add_argument("--inner-cv", default="kfold:3", help="inner CV of --select (default kfold:3)")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--configs", help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    ap.add_argument("--quick", action="store_true", help="kfold:5 and a subset of configurations")
    ap.add_argument("--params", default="{}", help="JSON of extra MILRegressor params for every configuration")
    ap.add_argument("--out", help="also write the table as TSV")
    ap.add_argument("--json", help="also write the results (table, out-of-fold predictions, targets) as JSON")
    ap.add_argument("--figure", help="also save the predicted-vs-true CRS-R scatter (PNG)")
    ap.add_argument("--features", help="region-table columns for every model, comma-separated, or 'all' "
                                       "(default: anomaly fit-crs's, each modality's mean z "
                                       "and pet_focal_logratio_z)")
    ap.add_argument("--global-features", help="subject-level values, comma-separated, 'all' or 'none' "
                                              "(default: global_cortical_pet_percent)")
    ap.add_argument("--new-cohort", nargs=3, metavar=("SCORES_DIR", "PARTICIPANTS", "TRUTH"),
                    help="another scored cohort: the model fitted on this one gives its patients CV+ "
                         "intervals, whose coverage and width are reported")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    ap.add_argument("--jobs", type=int, default=1, help="CV folds fitted in parallel processes (default 1)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    """Command line; returns the :func:`run` result."""
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.scores_dir is not None and (args.participants is None or args.truth is None):
        ap.error("--scores-dir needs --participants and --truth")
    if args.synthetic and args.scores_dir is not None:
        ap.error("--synthetic and --scores-dir are exclusive")
    names = args.configs.split(",") if args.configs else None
    select = args.select.split(",") if args.select else None
    unknown = [n for n in (names or []) + (select or []) if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    try:
        repeated_cv(args.cv, args.repeats)
    except ValueError as exc:
        ap.error(str(exc))
    if args.truth is not None:
        try:
            truth_paths(args.truth)
        except FileNotFoundError as exc:
            ap.error(str(exc))

    from anomaly.io import AnomalyInputError

    try:
        result = run(configs=names, cv=args.cv, quick=args.quick, scores_dir=args.scores_dir,
                     participants=args.participants, truth=args.truth, atlas=args.atlas, n_patients=args.n_patients,
                     seed=args.seed, n_bootstrap=args.n_bootstrap, params=json.loads(args.params),
                     threads=args.threads, features=args.features, global_features=args.global_features, jobs=args.jobs,
                     new_cohort=tuple(args.new_cohort) if args.new_cohort else None, repeats=args.repeats,
                     select=select, inner_cv=args.inner_cv)
    except AnomalyInputError as exc:  # e.g. a --features name the tables lack
        ap.error(str(exc))
    print(f"\nCRS-R benchmark: n={result['n']}, {result['n_regions']} regions, cv={result['cv']}, "
          f"estimate [95% bootstrap CI]; loc_auroc = causal regions by cohort mean out-of-fold attention; "
          f"seconds = CV wall time incl. bootstrap, cpu_s = CPU time of this process ({args.threads} thread(s), "
          f"{args.jobs} fold job(s))")
    print(text_table(result))
    print(f"MIL {primary_config(result)} minus each baseline, paired bootstrap (MAE below 0 / QWK above 0 is better):")
    print(result["differences"].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"MAE over {args.repeats} repeat(s) of the CV (mean, SD, range), and each MIL minus the best baseline "
          "(paired bootstrap over patients, all repeats):")
    print(result["repeats"].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if result["selected"]:
        print(f"nested selection ({args.inner_cv} inside each outer training fold) chose: "
              + ", ".join(f"{k} {v}x" for k, v in result["selected"].items()))
    print("out-of-fold MAE by PET availability:")
    print(result["by_pet"].pivot(index="model", columns="patients", values="mae").to_string(
        float_format=lambda v: f"{v:.2f}"))
    if result["intervals"] is not None:
        where = "the new cohort" if args.new_cohort else "200 new synthetic patients"
        print(f"~{100 * (1 - 0.1):.0f}% intervals of MIL {primary_config(result)} on {where}:")
        print(result["intervals"].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if result["loc_corr"]:
        print("group-correlation localisation AUROC (|rho|): "
              + ", ".join(f"{k} {v:.3f}" for k, v in result["loc_corr"].items()))
    print("targets (issue #5): " + "; ".join(
        f"{t['target']}: {t['value']} ({'n/a' if t['met'] is None else 'met' if t['met'] else 'NOT met'})"
        for t in result["targets"]))
    if args.out:
        result["table"].to_csv(args.out, sep="\t", index=False)
    if args.json:
        write_json(result, args.json)
    if args.figure:
        print(f"scatter: {plot_scatter(result, args.figure)}")
    return result


if __name__ == "__main__":
    main()
