"""Regional PET measures on a simulated cohort: focal damage and independence from the global level.

For every patient of a simulated cohort (realistic variation by default) scored with a
z-score normative model, per region of the Neuromorphometrics atlas: the AUROC of each
PET measure for focal damage (a region with at least 20% of its voxels in the
simulation's focal mask, as in EVALUATION.md) and the Spearman correlation, across
patients, of undamaged regions' values with the simulated global metabolism (0 is the
goal: a focal measure should not follow the global level). ``+coupling`` rows remove
the region-specific coupling to the global level (anomaly.atlas.petlevels.GlobalCoupling),
fitted on the other folds' patients (5-fold cross-fitting). Then the global cortical
level (best-preserved hemisphere and whole cortex) against 100 x the simulated
metabolism, the coverage and width of its 95% interval, and the scoring cost of the
new columns.

    python -m benchmarks.regional_pet --healthy 16 --patients 24 --resolution 4 --json regional_pet.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

SUBCORTICAL = ("Thalamus|Caudate|Putamen|Pallidum|Brain_Stem|Cerebell|Ventral_DC|Hippocampus|Amygdala|"
               "Accumbens|Ventricle|White|CSF|vessel|Optic|Basal_Forebrain")
MEASURES = ("pet_z_mean", "pet_focal_z_mean", "pet_focal_logratio", "pet_focal_logratio_z")


def cohort_tables(root: Path, n_healthy: int, n_patients: int, resolution: float, seed: int, variation: str):
    """Simulate, fit a z-score model, score every patient: (per-region rows, per-patient rows, seconds)."""
    from anomaly.atlas import RegionStats
    from anomaly.cli.scorer import Scorer
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.preprocess import resample_to_grid
    from anomaly.simulate import simulate_cohort
    from anomaly.simulate.variation import simulation_config

    bids = root / "bids"
    if not bids.exists():
        simulate_cohort(bids, n_healthy=n_healthy, n_patients=n_patients, seed=seed, resolution=resolution,
                        missing_fraction=0.0, progress=False, config=simulation_config(variation))
    if not (root / "model").exists():
        NormativeModel("zscore", resolution=resolution, seed=0, device="cpu").fit(
            find_subjects(bids), progress=False).save(root / "model")
    model = NormativeModel.load(root / "model")
    scorer = Scorer(model, ("neuromorphometrics",))
    stats = RegionStats(scorer.atlases[0], model.mask_)
    truth = pd.read_csv(bids / "derivatives/simulation/truth.tsv", sep="\t", na_values="n/a").set_index(
        "participant_id")
    regions, patients, seconds = [], [], []
    for subject in find_subjects(bids, group="patient"):
        score = model.transform(model.preprocess(subject.images))
        glob = scorer.global_pet(score)
        start = time.perf_counter()
        table = scorer.region_tables(score, glob)["neuromorphometrics"]
        seconds.append(time.perf_counter() - start)
        prefix = bids / f"derivatives/simulation/sub-{subject.label}/sub-{subject.label}_desc-"
        focal = resample_to_grid(f"{prefix}focal_mask.nii.gz", model.grid_, interpolation="nearest") > 0.5
        g = float(truth.loc[f"sub-{subject.label}", "global_metabolism"])
        table = table.assign(focal_fraction=stats.means(focal.astype(float)), g=g, pid=subject.label,
                             level=glob["global_cortical_pet_percent"])
        regions.append(table[table["n_voxels"] > 0])
        low, high = glob["global_cortical_pet_percent_ci95"]
        patients.append({"g": g, "best": glob["global_cortical_pet_percent"],
                         "whole": glob["global_cortical_pet_percent_whole_cortex"], "low": low, "high": high})
    return pd.concat(regions), pd.DataFrame(patients), float(np.median(seconds))


def cross_fitted_coupling(d: pd.DataFrame, folds: int = 5) -> pd.Series:
    """``pet_focal_logratio`` with the global coupling removed, each patient's slopes fitted on other folds."""
    from anomaly.atlas.petlevels import GlobalCoupling

    wide = d.pivot(index="pid", columns="index", values="pet_focal_logratio")
    level = d.groupby("pid")["level"].first().loc[wide.index].to_numpy()
    fold = np.arange(len(wide)) % folds
    out = np.full(wide.shape, np.nan)
    for k in range(folds):
        coupling = GlobalCoupling().fit(wide.to_numpy()[fold != k], level[fold != k])
        out[fold == k] = coupling.transform(wide.to_numpy()[fold == k], level[fold == k])
    adjusted = pd.DataFrame(out, index=wide.index, columns=wide.columns).stack(future_stack=True)
    return adjusted.reindex(pd.MultiIndex.from_arrays([d["pid"], d["index"]])).to_numpy()


def evaluate(d: pd.DataFrame, patients: pd.DataFrame) -> dict:
    """The tables' numbers (see the module docstring)."""
    d = d.assign(**{"pet_focal_logratio+coupling": cross_fitted_coupling(d)})
    damaged = d["focal_fraction"] >= 0.2
    deep = d["name"].str.contains(SUBCORTICAL)
    rows = []
    for col in (*MEASURES, "pet_focal_logratio+coupling"):
        ok = d[col].notna()
        undamaged = ok & (d["focal_fraction"] < 0.02)
        rows.append({"measure": col, "auroc_focal": roc_auc_score(damaged[ok], -d.loc[ok, col]),
                     "auroc_focal_subcortical": roc_auc_score(damaged[ok & deep], -d.loc[ok & deep, col]),
                     "rho_global_cortical": spearmanr(d.loc[undamaged & ~deep, col], d.loc[undamaged & ~deep, "g"])
                     .statistic,
                     "rho_global_subcortical": spearmanr(d.loc[undamaged & deep, col], d.loc[undamaged & deep, "g"])
                     .statistic})
    level = {name: {"mae_vs_100g": float(np.mean(np.abs(patients[name] - 100 * patients["g"]))),
                    "spearman": float(spearmanr(patients[name], patients["g"]).statistic)}
             for name in ("best", "whole")}
    inside = (patients["low"] <= 100 * patients["g"]) & (100 * patients["g"] <= patients["high"])
    return {"measures": rows, "level": level, "ci95_coverage": float(inside.mean()),
            "ci95_width": float((patients["high"] - patients["low"]).mean()),
            "n_pairs": len(d), "n_damaged": int(damaged.sum()), "n_patients": len(patients)}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--healthy", type=int, default=16)
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--variation", default="realistic", choices=("default", "realistic"))
    parser.add_argument("--workdir", type=Path, help="keep the cohort and model here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        d, patients, seconds = cohort_tables(root, args.healthy, args.patients, args.resolution, args.seed,
                                             args.variation)
    result = {**evaluate(d, patients), "region_table_seconds": seconds, "settings": vars(args) | {
        "workdir": str(args.workdir), "json": str(args.json)}}
    print(f"{result['n_patients']} patients, {args.healthy} controls, {args.resolution:g} mm, {args.variation}; "
          f"{result['n_damaged']} of {result['n_pairs']} region-patient pairs focally damaged")
    print("| measure | AUROC focal damage | AUROC, subcortical | rho with global, undamaged cortical | "
          "rho, undamaged subcortical |\n|---|---|---|---|---|")
    for r in result["measures"]:
        print(f"| `{r['measure']}` | {r['auroc_focal']:.3f} | {r['auroc_focal_subcortical']:.3f} | "
              f"{r['rho_global_cortical']:+.2f} | {r['rho_global_subcortical']:+.2f} |")
    for name, text in (("best", "best hemisphere"), ("whole", "whole cortex")):
        lv = result["level"][name]
        print(f"global level, {text}: MAE vs 100 g {lv['mae_vs_100g']:.1f} points, Spearman {lv['spearman']:.3f}")
    print(f"95% interval: covers 100 g in {result['ci95_coverage']:.2f} of patients, mean width "
          f"{result['ci95_width']:.1f} points; region table (1 atlas) {1000 * seconds:.1f} ms per subject")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
