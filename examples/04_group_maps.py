"""Group maps: which regions' anomaly goes with the CRS-R across patients?

:func:`anomaly.cli.crs.group_analysis` correlates every atlas region's anomaly features
(by default the mean combined anomaly and the mean PET z) with the CRS-R over the
patients (Spearman rho), corrects the p-values for the number of regions x features
tested (Benjamini-Hochberg FDR q-values), and writes the group maps: rho painted on the
atlas and the mean anomaly map of each CRS-R band (0-7, 8-15, 16-23), each with a glass
brain. With a CRS model (``--crs-model``, e.g. ``crs_model`` from
``03_crs_regression.py``) it also maps the cohort's mean attention.

This script:

1. scores a simulated cohort (quick z-score model + :class:`anomaly.cli.scorer.Scorer`), or
   reads an existing scores folder (``--scores DIR --participants participants.tsv``);
2. runs the group analysis into ``OUT/group``;
3. prints the regions most correlated with the CRS-R with their q-values (negative rho:
   more anomaly, lower CRS-R), marking for simulated data the regions whose damage
   drives the simulated CRS-R, and lists the glass brains.

Run from the repository root::

    python examples/04_group_maps.py --quick
    python examples/04_group_maps.py --scores my_scores --participants bids/participants.tsv \\
        --crs-model my_crs_model
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from _common import output_dir, parser, quiet_atlas_warnings, simulated_scores

from anomaly.cli.crs import group_analysis


def main(argv: list[str] | None = None) -> pd.DataFrame:
    p = parser(__doc__)
    p.add_argument("--scores", type=Path, help="existing scores folder (output of `anomaly score`)")
    p.add_argument("--participants", type=Path, help="participants.tsv with the crs column (with --scores)")
    p.add_argument("--crs-model", type=Path, help="CRS model folder, to map the mean attention too")
    p.add_argument("--fdr", type=float, default=0.05, help="FDR level of the 'significant' column (default 0.05)")
    args = p.parse_args(argv)
    if (args.scores is None) != (args.participants is None):
        p.error("--scores and --participants go together")
    out = output_dir(args.out, "04")
    quiet_atlas_warnings()

    # 1. Scored patients: region tables and anomaly maps under sub-<label>/.
    if args.scores is None:
        participants, scores = simulated_scores(out, quick=args.quick, seed=args.seed)
    else:
        participants, scores = args.participants, args.scores

    # 2. Group analysis: correlations (TSV), band mean maps and rho maps (NIfTI + PNG).
    outputs = group_analysis(scores, participants, out / "group", crs_model=args.crs_model, fdr=args.fdr)

    # 3. The strongest associations. q is the FDR-adjusted p over all tests.
    corr = pd.read_csv(outputs["correlations"], sep="\t", na_values="n/a").dropna(subset=["p"])
    top = corr.sort_values("p").head(10).copy()
    truth = Path(participants).parent / "derivatives" / "simulation" / "causal_regions.json"
    if truth.exists():
        causal = set(json.loads(truth.read_text())["regions"])
        top["causal"] = np.where(top["name"].isin(causal), "yes", "")
    n = int(corr["n"].max()) if len(corr) else 0
    print(f"\nRegions most correlated with the CRS-R ({n} patients, Spearman rho; q = Benjamini-Hochberg "
          f"over {len(corr)} tests, {int(corr['significant'].sum())} with q <= {args.fdr:g}):")
    columns = [c for c in ("name", "feature", "rho", "p", "q", "significant", "causal") if c in top.columns]
    print(top[columns].to_string(index=False, float_format=lambda v: f"{v:.3g}"))

    print("\nGlass brains (next to their NIfTI maps):")
    for statmap in outputs.values():
        png = Path(str(statmap).replace("_statmap.nii.gz", "_glassbrain.png"))
        if png != statmap and png.exists():
            print(f"  {png}")
    print(f"outputs in {out}")
    return top


if __name__ == "__main__":
    main()
