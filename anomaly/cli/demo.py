"""``anomaly demo``: the whole toolkit on a simulated cohort, in one command.

The demo runs exactly the commands a user would run on their own BIDS dataset (their
command functions, :data:`anomaly.cli.commands.PIPELINE`, in-process), and prints each
command line before it runs, so that it doubles as a tutorial:

1. ``anomaly simulate``       a cohort of controls and coma patients with ground truth, five
                              volumes each (T1w, T2w, FLAIR, ADC map, FDG PET)
2. ``anomaly fit-normative``  the default (hybrid) normative model on the controls
3. ``anomaly score``          anomaly maps, region tables, figures and reports
4. ``anomaly fit-crs``        the CRS-R regressor, cross-validated against baselines
5. ``anomaly predict``        CRS-R estimates with intervals and explanation maps
6. ``anomaly group``          region-wise correlations with the CRS-R and group maps

It ends with ``index.html`` linking everything, with the headline numbers: lesion
detection against the simulator's ground truth and the cross-validated CRS-R metrics.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.cli.commands import PIPELINE
from anomaly.cli.parser import build_parser
from anomaly.cli.status import EXIT_OK, CommandFailed, run_guarded
from anomaly.io import AnomalyInputError, check_output_dir, read_map, write_text


@dataclass(frozen=True)
class DemoSize:
    """Cohort and model size of a demo run."""

    healthy: int
    patients: int
    resolution: float
    epochs: int
    cv: str
    seeds: int
    crs_epochs: int | None = None  # None: the regressor's default


#: Default: about 10 minutes on 2 CPU cores. Quick: about 1 minute.
FULL = DemoSize(healthy=50, patients=50, resolution=3.0, epochs=20, cv="loo", seeds=3)
QUICK = DemoSize(healthy=16, patients=16, resolution=4.0, epochs=8, cv="kfold:4", seeds=2, crs_epochs=80)


#: Volumes of every simulated subject: every modality the simulator writes, as a coma
#: team's session has them (the models use each one; a patient may lack some).
DEMO_MODALITIES = ("T1w", "T2w", "FLAIR", "ADC", "pet")


def _run(argv: list[str], log: list[dict], progress: bool, debug: bool = False) -> None:
    """Run one pipeline command in-process, echo it, and stop the demo if it fails.

    The echoed line is the command a user would type; the CLI's own parser turns it
    into the arguments of the command function, so the line states exactly what runs.
    Errors print the command's own one-line message (:func:`anomaly.cli.status.run_guarded`).
    """
    shown = "anomaly " + " ".join(shlex.quote(a) for a in argv)
    print(f"\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    args = build_parser().parse_args(argv + ([] if progress else ["--quiet"]))
    status = run_guarded(args.command, lambda: PIPELINE[args.command](args), debug=debug)
    seconds = time.perf_counter() - t0
    log.append({"command": shown, "seconds": seconds, "status": status})
    if status != EXIT_OK:
        raise CommandFailed(f"demo step failed with exit status {status}: {shown}", status)


def run_demo(out: str | Path = "anomaly_demo", *, quick: bool = False, seed: int = 0,
             progress: bool = True, debug: bool = False) -> Path:
    """Run the demo into ``out`` and return the path of its index.html.

    Parameters
    ----------
    out : path
        New or empty output folder.
    quick : bool
        Smaller cohort, coarser grid, fewer epochs (about 2 minutes).
    seed : int
        Seed of the simulation and of every model.
    progress : bool
        Show progress bars.
    debug : bool
        Let a failing step raise with its traceback instead of its one-line message.

    Raises
    ------
    CommandFailed
        A step failed (its message is printed); ``status`` is its exit status.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AnomalyInputError(f"{out}: output folder exists and is not empty; choose a new --out")
    out = check_output_dir(out)
    size = QUICK if quick else FULL
    bids, model, scores = out / "bids", out / "normative_model", out / "scores"
    crs_model, crs_dir, group = out / "crs_model", out / "crs", out / "group"
    participants = bids / "participants.tsv"
    log: list[dict] = []
    start = time.perf_counter()
    res = f"{size.resolution:g}"
    _run(["simulate", str(bids), "--healthy", str(size.healthy), "--patients", str(size.patients),
          "--resolution", res, "--seed", str(seed), "--jobs", "2", "--modalities", *DEMO_MODALITIES],
         log, progress, debug)
    _run(["fit-normative", str(bids), "--out", str(model), "--resolution", res,
          "--epochs", str(size.epochs), "--seed", str(seed), "--device", "auto"], log, progress, debug)
    _run(["score", str(bids), "--model", str(model), "--out", str(scores)], log, progress, debug)
    _run(["fit-crs", str(scores), "--participants", str(participants), "--out", str(crs_model),
          "--cv", size.cv, "--seeds", str(size.seeds), "--seed", str(seed), "--jobs", "2"]
         + ([] if size.crs_epochs is None else ["--epochs", str(size.crs_epochs)]), log, progress, debug)
    _run(["predict", str(scores), "--model", str(crs_model), "--out", str(crs_dir / "predictions.tsv")],
         log, progress, debug)
    _run(["group", str(scores), "--participants", str(participants), "--out", str(group),
          "--crs-model", str(crs_model)], log, progress, debug)
    detection = detection_summary(bids, scores)
    index = write_demo_index(out, size=size, log=log, detection=detection,
                             seconds=time.perf_counter() - start)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; open {index}")
    return index


def detection_summary(bids: Path, scores: Path) -> dict:
    """Voxel AUROC of the patients' anomaly maps for their simulated focal lesions."""
    from sklearn.metrics import roc_auc_score

    from anomaly.preprocess import Grid, template_images
    from anomaly.simulate.truth import read_truth

    truth = bids / "derivatives" / "simulation"
    values, labels = [], []
    template_mask = None  # for cohorts written before the patients' brain masks; one grid per scores folder
    for anomaly_path in sorted(scores.glob("sub-*/sub-*_stat-anomaly_statmap.nii.gz")):
        label = anomaly_path.parent.name
        prefix = truth / label / f"{label}_desc-"
        if not Path(f"{prefix}focal_mask.nii.gz").exists():
            continue
        img = read_map(anomaly_path, str(anomaly_path))
        grid = Grid(shape=img.shape, affine=img.affine, resolution=float(abs(img.affine[0, 0])))
        anomaly = np.asarray(img.dataobj, np.float32)
        if template_mask is None:
            template_mask = template_images(grid)["mask"] > 0.5
        truth_masks = read_truth(truth, label.removeprefix("sub-"), grid, template_mask)
        evaluated = truth_masks.focal_evaluated
        values.append(np.nan_to_num(anomaly[evaluated]))
        labels.append(truth_masks.focal[evaluated])
    if not labels or not np.concatenate(labels).any():
        return {}
    y, s = np.concatenate(labels), np.concatenate(values)
    return {"focal_lesion_voxel_auroc": float(roc_auc_score(y, s)), "n_patients": len(labels)}


#: Outputs linked from the demo's index.html (those written), relative to the demo folder.
DEMO_OUTPUTS = (
    ("scores/index.html", "Per-patient reports (anomaly maps, regions, global metabolism)"),
    ("normative_model/loss_curve.png", "Autoencoder training curve"),
    ("crs_model/cv_metrics.tsv", "CRS-R cross-validated metrics with baselines"),
    ("crs_model/cv_predictions.tsv", "CRS-R out-of-fold predictions"),
    ("crs/predictions.tsv", "CRS-R predictions with intervals"),
    ("group/group_correlations.tsv", "Region-wise correlation of anomaly with the CRS-R"),
    ("bids/participants.tsv", "Simulated participants"),
    ("bids/derivatives/simulation/truth.tsv", "Simulation ground truth"),
)


def write_demo_index(out: Path, *, size: DemoSize, log: list[dict], detection: dict, seconds: float) -> Path:
    """index.html linking every demo output, with the headline metrics; and demo_summary.json."""
    from anomaly.report.html import render_demo_index

    path = render_demo_index(
        out / "index.html",
        cohort=(f"{size.healthy} controls, {size.patients} patients, {size.resolution:g} mm; "
                f"{len(DEMO_MODALITIES)} volumes each ({', '.join(DEMO_MODALITIES)})"),
        headline=_headline_numbers(out, size, detection, seconds),
        outputs=[(out / rel, text) for rel, text in DEMO_OUTPUTS if (out / rel).exists()],
        figures=sorted((out / "group").glob("*.png"), key=_natural_key),
        commands=[(entry["command"], entry["seconds"]) for entry in log])
    write_text(json.dumps({"size": size.__dict__, "commands": log, "detection": detection}, indent=2),
               out / "demo_summary.json")
    return path


def _natural_key(path: Path) -> list:
    """Sort key reading digit runs as numbers: CRS-R band 8-15 comes before 16-23."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _headline_numbers(out: Path, size: DemoSize, detection: dict, seconds: float) -> dict[str, str]:
    """Label -> formatted value: lesion detection, cross-validated CRS-R metrics, run time."""
    headline = {}
    if detection:
        headline[f"Focal-lesion voxel AUROC (simulated ground truth, {detection['n_patients']} patients)"] = \
            f"{detection['focal_lesion_voxel_auroc']:.3f}"
    metrics_path = out / "crs_model" / "cv_metrics.tsv"
    if metrics_path.exists():
        metrics = pd.read_csv(metrics_path, sep="\t")
        for _, row in metrics.iterrows():
            # The training-mean baseline has no ranking (its LOO Spearman is an artefact).
            wanted = ("mae",) if row.get("model") == "mean" else ("mae", "spearman")
            if str(row.get("metric")).lower() in wanted:
                headline[f"CRS-R {row['model']} {row['metric']} ({size.cv} CV)"] = \
                    f"{row['estimate']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]"
    headline["Total run time"] = f"{seconds:.0f} s"
    return headline
