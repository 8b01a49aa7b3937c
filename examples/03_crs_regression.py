"""Predict the CRS-R from region anomaly tables with a chosen loss and curriculum.

Each scored patient is a *bag* of atlas regions, each region a vector of anomaly
features (mean anomaly, z of each modality, fraction of abnormal voxels...). The
multiple-instance regressor (:class:`anomaly.crs.MILRegressor`) embeds every region,
pools them with gated attention and predicts the CRS-R total (0-23); its attention
says which regions the prediction rests on.

This script:

1. builds region tables for a simulated cohort: simulate, fit a quick z-score model on
   the controls, score the patients with :class:`anomaly.cli.scorer.Scorer` (or reads an
   existing scores folder: ``--scores DIR --participants participants.tsv``);
2. loads them as bags (:func:`anomaly.crs.load_region_bags`) with the CRS-R labels and
   keeps the columns ``anomaly fit-crs`` uses by default (``--features``: each region's
   mean anomaly, plus the global cortical PET level; ``all`` for every column);
3. cross-validates the MIL regressor with the loss (``--loss``: mse, huber, coral,
   corn, rank, kappa, soft, or combinations such as ``coral+rank``) and curriculum
   (``--curriculum``: none, confidence, self-paced, random) of your choice, against a
   ridge regression, the seven-parameter arousal x awareness model and the training-fold
   mean, and prints MAE, RMSE, Spearman, quadratic-weighted kappa and the UWS/MCS AUROC
   with bootstrap 95% intervals, then the regressor's paired difference to each baseline;
4. fits the regressor on all patients, saves it (usable by ``anomaly predict`` and
   ``anomaly score --crs-model``) and prints the regions with the highest attention.
   For simulated data it marks the regions whose damage drives the simulated CRS-R.

Run from the repository root::

    python examples/03_crs_regression.py --quick
    python examples/03_crs_regression.py --loss mse --curriculum none --cv loo
    python examples/03_crs_regression.py --scores my_scores --participants bids/participants.tsv

With ``--quick`` (20 patients, 40 epochs, 2 ensemble members) the metrics are noisy:
they show that the pipeline runs, not which loss is best (see ``benchmarks/crs.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from _common import output_dir, parser, quiet_atlas_warnings, simulated_scores

from anomaly.crs import (MILRegressor, cross_validate, find_region_tables, load_region_bags, save_crs_model,
                         select_features)
from anomaly.io import read_participants, write_tsv


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = parser(__doc__)
    p.add_argument("--loss", default="coral+rank", help="MIL loss, e.g. mse, coral, coral+rank (default)")
    p.add_argument("--curriculum", default="confidence", choices=("none", "confidence", "self-paced", "random"),
                   help="easy-to-hard training order (default confidence)")
    p.add_argument("--cv", default=None, help="loo, kfold:K or kfold:KxR (default kfold:4 quick, loo otherwise)")
    p.add_argument("--features", default=None,
                   help="region-table columns, comma-separated, or 'all' (default: anomaly fit-crs's, anomaly_mean)")
    p.add_argument("--scores", type=Path, help="existing scores folder (output of `anomaly score`)")
    p.add_argument("--participants", type=Path, help="participants.tsv with the crs column (with --scores)")
    args = p.parse_args(argv)
    if (args.scores is None) != (args.participants is None):
        p.error("--scores and --participants go together")
    out = output_dir(args.out, "03")
    quiet_atlas_warnings()

    # 1. Region tables: one sub-<label>/..._atlas-<name>_regions.tsv per patient.
    if args.scores is None:
        participants, scores = simulated_scores(out, quick=args.quick, seed=args.seed)
    else:
        participants, scores = args.participants, args.scores

    # 2. Bags (patients x regions x features) and labels, in the same order: the
    #    participants with a CRS-R and a region table. A crs_sd column (label SD, e.g.
    #    from repeated exams) feeds the soft-label loss and the confidence curriculum.
    table = read_participants(participants)
    _, tables = find_region_tables(scores)
    lacking = table["crs"].notna() & ~table["participant_id"].isin(tables)
    if lacking.any():
        print(f"skipped (CRS-R but no region table): {', '.join(table.loc[lacking, 'participant_id'])}")
    table = table[table["crs"].notna() & table["participant_id"].isin(tables)]
    bags = load_region_bags(scores, participant_ids=table["participant_id"].tolist())
    # Few, meaningful columns: with ~50 patients every extra column per region adds
    # noise to the MIL regressor and to ridge alike (README, "CRS-R regression").
    bags = select_features(bags, args.features)
    y = table["crs"].to_numpy(float)
    y_sd = table["crs_sd"].to_numpy(float) if table["crs_sd"].notna().any() else None
    print(f"{len(bags)} patients, {len(bags.region_names)} regions, features {', '.join(bags.feature_names)}"
          f" + {', '.join(bags.global_feature_names) or 'no'} subject-level"
          f"; CRS-R {y.min():.0f}-{y.max():.0f} (median {np.median(y):.0f})")

    # 3. Cross-validation. The estimator is cloned for every fold; the baselines see the
    #    same folds (ridge on the same region features flattened, the arousal x awareness
    #    model, the training mean). The fold models are kept for CV+ intervals.
    curriculum = None if args.curriculum == "none" else args.curriculum
    estimator = MILRegressor(loss=args.loss, curriculum=curriculum, n_seeds=2 if args.quick else 5, seed=args.seed,
                             **({"epochs": 40} if args.quick else {}))
    cv = args.cv or ("kfold:4" if args.quick else "loo")
    result = cross_validate(bags, y, estimator, y_sd=y_sd, cv=cv, seed=args.seed,
                            n_bootstrap=200 if args.quick else 1000, keep_fold_models=True)
    print(f"\nCross-validated CRS-R prediction: loss={args.loss}, curriculum={args.curriculum}, cv={cv}"
          " (estimate [95% bootstrap CI])")
    print(result.table().to_string())
    print("\nRegressor minus each baseline, paired bootstrap (MAE: below 0 is better)")
    print(result.differences.round(3).to_string(index=False))
    write_tsv(result.metrics, out / "cv_metrics.tsv")
    write_tsv(result.predictions, out / "cv_predictions.tsv")

    # 4. Final model on all patients; its mean attention over the cohort ranks the regions.
    model = estimator.fit(bags, y, y_sd)
    # The fold models give `anomaly predict` its CV+ intervals; the conformal radius (capped
    # at the whole scale: infinite with very few patients) is kept for the record.
    save_crs_model(model, out / "crs_model", conformal_quantile=min(result.conformal_quantile, 23.0),
                   alpha=result.alpha, cv_metrics=result.metrics, cv_plus=result.cv_plus)
    attention = model.attention(bags).mean(axis=0)
    ranking = pd.DataFrame({"region": model.region_names_, "attention": attention,
                            "relative": attention * len(attention)})  # 1 = uniform attention
    causal = _causal_regions(Path(participants).parent)
    if causal is not None:
        ranking["causal"] = np.where(ranking["region"].isin(causal), "yes", "")
    top = ranking.sort_values("attention", ascending=False).head(10)
    print("\nTop-attention regions of the model fitted on all patients:")
    print(top.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nCRS model saved in {out / 'crs_model'}")
    print(f"outputs in {out}")
    return result.metrics


def _causal_regions(bids: Path) -> set[str] | None:
    """Regions whose damage lowers the simulated CRS-R (simulated cohorts only)."""
    path = bids / "derivatives" / "simulation" / "causal_regions.json"
    return set(json.loads(path.read_text())["regions"]) if path.exists() else None

if __name__ == "__main__":
    main()
