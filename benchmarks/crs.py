"""Benchmark of the CRS-R regressor: accuracy, localisation and run time.

Compares, with the same cross-validation folds and bootstrap draws:

* the MIL attention regressor with each loss (mse, huber, coral, corn, rank, kappa,
  soft, coral+rank), with label-distribution smoothing, and with each curriculum
  (confidence, self-paced) against the random-order control with the same growing
  training-set sizes;
* the two baselines: ridge regression on the flattened region features and the
  training-fold mean;
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
generating model is documented there). Otherwise ``--scores-dir`` (output of
`anomaly score` on a simulated cohort), ``--participants`` and ``--truth``
(``derivatives/simulation/truth.tsv`` with ``crs_true``; ``causal_regions.json`` next to
it lists the causal region names).

Targets (issue #5): MIL MAE <= 1.3 x noise floor and below ridge; Spearman >= 0.8;
localisation AUROC >= 0.9; LOO on 50 patients < 2 min.

Usage::

    python benchmarks/crs.py                    # full LOO table, synthetic cohort
    python benchmarks/crs.py --quick            # 5-fold CV, fewer configurations
    python benchmarks/crs.py --configs mse,coral --cv kfold:5x2
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anomaly.crs import cross_validate, load_region_bags, region_correlations  # noqa: E402
from anomaly.crs.synthetic import simulate_region_bags  # noqa: E402

CONFIGS: dict[str, dict] = {
    "mse": {"loss": "mse"},
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
}
QUICK = ["mse", "coral", "rank", "soft", "mse+lds", "mse+cur-confidence", "mse+cur-random"]


def load_inputs(args: argparse.Namespace):
    """Bags, noisy labels, label SDs, noise-free scores and the causal-region mask."""
    if args.scores_dir is None:
        c = simulate_region_bags(args.n_patients, seed=args.seed)
        return c.bags, c.crs, c.crs_sd, c.crs_true, c.causal
    from anomaly.io import read_participants

    parts = read_participants(args.participants)
    parts = parts[parts["crs"].notna()]
    truth = pd.read_csv(args.truth, sep="\t", na_values=["n/a"])
    causal_json = Path(args.truth).with_name("causal_regions.json")
    causal_names = json.loads(causal_json.read_text()) if causal_json.is_file() else {}
    bags = load_region_bags(args.scores_dir, atlas=args.atlas)
    keep = [p for p in bags.participant_ids if p in set(parts.participant_id)]
    bags = bags.subset([bags.participant_ids.index(p) for p in keep])
    parts = parts.set_index("participant_id").loc[keep]
    crs_true = truth.set_index("participant_id").loc[keep, "crs_true"].to_numpy(float)
    names = causal_names.get("regions", causal_names) if isinstance(causal_names, dict) else causal_names
    causal = np.array([any(str(n).lower() in r.lower() for n in names) for r in bags.region_names])
    sd = parts["crs_sd"].to_numpy(float) if "crs_sd" in parts else None
    return bags, parts["crs"].to_numpy(float), sd, crs_true, causal


def cell(df: pd.DataFrame, model: str, metric: str) -> str:
    r = df[(df.model == model) & (df.metric == metric)].iloc[0]
    return f"{r.estimate:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--synthetic", action="store_true", help="simulated region tables (default without --scores-dir)")
    ap.add_argument("--scores-dir")
    ap.add_argument("--participants")
    ap.add_argument("--truth", help="derivatives/simulation/truth.tsv (causal_regions.json next to it)")
    ap.add_argument("--atlas")
    ap.add_argument("--n-patients", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cv", default="loo")
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--configs", help=f"comma-separated subset of: {', '.join(CONFIGS)}")
    ap.add_argument("--quick", action="store_true", help="kfold:5 and a subset of configurations")
    ap.add_argument("--params", default="{}", help="JSON of extra MILRegressor params for every configuration")
    ap.add_argument("--out", help="also write the table as TSV")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.scores_dir is not None and (args.participants is None or args.truth is None):
        ap.error("--scores-dir needs --participants and --truth")
    torch.set_num_threads(args.threads)
    cv = "kfold:5" if args.quick and args.cv == "loo" else args.cv
    names = args.configs.split(",") if args.configs else (QUICK if args.quick else list(CONFIGS))
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    extra = json.loads(args.params)

    bags, y, y_sd, crs_true, causal = load_inputs(args)
    floor = float(np.mean(np.abs(crs_true - y)))
    print(f"cohort: {len(y)} patients, {len(bags.region_names)} regions ({int(causal.sum())} causal), "
          f"{len(bags.feature_names)} features; cv={cv}; noise floor MAE={floor:.3f}", file=sys.stderr)

    rows = []
    baselines = None
    for i, name in enumerate(names):
        params = {**CONFIGS[name], "seed": args.seed, **extra}
        t0, c0 = time.perf_counter(), time.process_time()
        res = cross_validate(bags, y, params, y_sd=y_sd, cv=cv, seed=args.seed, n_bootstrap=args.n_bootstrap,
                             baselines=baselines is None, progress=False)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0  # the machine may be shared: CPU time is the fairer cost
        if baselines is None:
            baselines = res
        loc = roc_auc_score(causal, res.attention.mean(0)) if causal.any() and not causal.all() else float("nan")
        rows.append({"model": f"MIL {name}", **{m: cell(res.metrics, "mil", m) for m in ("mae", "rmse", "spearman", "qwk", "auroc")},
                     "mae_est": res.metric("mil", "mae"), "loc_auroc": loc, "seconds": res.seconds["mil"], "cpu_s": cpu})
        print(f"[{i + 1}/{len(names)}] {name}: MAE {rows[-1]['mae']}, loc {loc:.3f}, {res.seconds['mil']:.0f} s wall, "
              f"{cpu:.0f} s CPU",
              file=sys.stderr, flush=True)
    for base in ("ridge", "mean"):
        rows.append({"model": base, **{m: cell(baselines.metrics, base, m) for m in ("mae", "rmse", "spearman", "qwk", "auroc")},
                     "mae_est": baselines.metric(base, "mae"), "loc_auroc": float("nan"),
                     "seconds": baselines.seconds[base], "cpu_s": float("nan")})
    corr = region_correlations(bags, y, features=("pet_z_mean", "anomaly_mean"))
    loc_corr = {}
    for feat in ("pet_z_mean", "anomaly_mean"):
        sub = corr[corr.feature == feat]
        if len(sub):
            score = np.nan_to_num(np.abs(sub["rho"].to_numpy()))
            loc_corr[feat] = roc_auc_score(causal, score)
    rows.append({"model": "oracle (crs_true)", **{m: "" for m in ("rmse", "spearman", "qwk", "auroc")},
                 "mae": f"{floor:.2f}", "mae_est": floor, "loc_auroc": float("nan"), "seconds": 0.0, "cpu_s": float("nan")})
    table = pd.DataFrame(rows)
    table["mae/floor"] = table["mae_est"] / floor
    show = table[["model", "mae", "mae/floor", "rmse", "spearman", "qwk", "auroc", "loc_auroc", "seconds", "cpu_s"]]
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        print(f"\nCRS-R benchmark: n={len(y)}, {len(bags.region_names)} regions, cv={cv}, "
              f"estimate [95% bootstrap CI]; loc_auroc = causal regions by cohort mean out-of-fold attention; "
              f"seconds = CV wall time, cpu_s = CPU time of the whole CV incl. bootstrap (1 thread)")
        print(show.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
        print("group-correlation localisation AUROC (|rho|): "
              + ", ".join(f"{k} {v:.3f}" for k, v in loc_corr.items()))
    if args.out:
        table.to_csv(args.out, sep="\t", index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
