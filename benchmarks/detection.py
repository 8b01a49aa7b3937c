"""Voxel-level detection benchmark: denoising autoencoder versus voxelwise z-scores.

Simulates a cohort (controls for training, patients and extra held-out controls for
testing), fits both normative methods on the training controls, scores the test
subjects and prints, for each method:

* voxel AUROC, AUPRC and best Dice (over thresholds) of the combined anomaly map
  against the focal-lesion masks (voxels changed only by global hypometabolism are
  left out of the evaluation) and against the all-change masks;
* patient-versus-control AUROC of the maximum anomaly (subject-level detection);
* fit time, peak resident memory of the fit and scoring throughput.

Usage::

    python benchmarks/detection.py                  # 100 controls, 50 patients, 2 mm
    python benchmarks/detection.py --quick          # 20 controls, 10 patients, 4 mm
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score


def machine() -> str:
    """CPU model and core count, for the table header."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def best_dice(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best Dice over all thresholds (from the precision-recall curve)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    dice = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(dice.max())


def evaluate(model, subjects, truth_dir: Path, controls) -> dict:
    """Voxel and subject metrics of one fitted model."""
    from anomaly.preprocess import resample_to_grid

    focal_scores, focal_labels, all_scores, all_labels = [], [], [], []
    max_patient, max_control = [], []
    t0 = time.perf_counter()
    for s in subjects:
        score = model.score(s.images, age=s.age, sex=s.sex)
        prefix = truth_dir / f"sub-{s.label}" / f"sub-{s.label}_desc-"
        focal = resample_to_grid(f"{prefix}focal_mask.nii.gz", model.grid_, interpolation="nearest") > 0.5
        changed = resample_to_grid(f"{prefix}lesion_mask.nii.gz", model.grid_, interpolation="nearest") > 0.5
        brain = model.mask_
        evaluated = brain & ~(changed & ~focal)
        focal_scores.append(score.anomaly[evaluated])
        focal_labels.append(focal[evaluated])
        all_scores.append(score.anomaly[brain])
        all_labels.append(changed[brain])
        max_patient.append(float(score.anomaly.max()))
    for s in controls:
        score = model.score(s.images, age=s.age, sex=s.sex)
        max_control.append(float(score.anomaly.max()))
    seconds = (time.perf_counter() - t0) / (len(subjects) + len(controls))
    fs, fl = np.concatenate(focal_scores), np.concatenate(focal_labels)
    als, al = np.concatenate(all_scores), np.concatenate(all_labels)
    y = np.r_[np.ones(len(max_patient)), np.zeros(len(max_control))]
    return {
        "focal_auroc": roc_auc_score(fl, fs), "focal_auprc": average_precision_score(fl, fs),
        "focal_dice": best_dice(fl, fs), "focal_prevalence": float(fl.mean()),
        "all_auroc": roc_auc_score(al, als), "all_auprc": average_precision_score(al, als),
        "all_dice": best_dice(al, als),
        "subject_auroc": roc_auc_score(y, np.r_[max_patient, max_control]) if max_control else float("nan"),
        "seconds_per_subject": seconds,
    }


def fit_in_child(method: str, bids: Path, out: Path, settings: dict) -> tuple[float, float]:
    """Fit in a child process so that its peak memory is measured on its own."""
    import subprocess

    code = (
        "import json, sys, time, resource\n"
        "from anomaly.io import find_subjects\n"
        "from anomaly.normative import NormativeModel\n"
        "t = time.perf_counter()\n"
        f"m = NormativeModel({method!r}, **json.loads(sys.argv[1]))\n"
        f"m.fit(find_subjects({str(bids)!r}, group='control'), workdir={str(out)!r}, progress=True)\n"
        f"m.save({str(out)!r})\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, "
        "'peak_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], check=True,
                            stdout=subprocess.PIPE, text=True)
    info = json.loads(result.stdout.strip().splitlines()[-1])
    return info["seconds"], info["peak_mb"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--healthy", type=int, default=100, help="training controls (default 100)")
    parser.add_argument("--patients", type=int, default=50, help="test patients (default 50)")
    parser.add_argument("--test-controls", type=int, default=20, help="held-out test controls (default 20)")
    parser.add_argument("--resolution", type=float, default=2.0, help="mm (default 2)")
    parser.add_argument("--epochs", type=int, default=20, help="autoencoder epochs (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, help="keep data and models here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="20 controls, 10 patients, 4 mm, 8 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.healthy, args.patients, args.test_controls = 20, 10, 5
        args.resolution, args.epochs = 4.0, 8

    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.simulate import simulate_cohort

    work = args.out_dir or Path(tempfile.mkdtemp(prefix="anomaly-detection-"))
    work.mkdir(parents=True, exist_ok=True)
    train_bids, test_bids = work / "train", work / "test"
    t0 = time.perf_counter()
    if not train_bids.exists():
        simulate_cohort(train_bids, n_healthy=args.healthy, n_patients=0, seed=args.seed,
                        resolution=args.resolution, n_jobs=2)
    if not test_bids.exists():
        simulate_cohort(test_bids, n_healthy=args.test_controls, n_patients=args.patients,
                        seed=args.seed + 1, resolution=args.resolution, missing_fraction=0.0, n_jobs=2)
    sim_seconds = time.perf_counter() - t0

    test = find_subjects(test_bids, group="patient")
    test_controls = find_subjects(test_bids, group="control")
    truth = test_bids / "derivatives" / "simulation"
    settings = {
        "zscore": {"resolution": args.resolution, "seed": args.seed, "device": "cpu"},
        "ae": {"resolution": args.resolution, "seed": args.seed, "device": "cpu", "epochs": args.epochs},
    }
    results = {}
    for method in ("zscore", "ae"):
        out = work / f"model-{method}"
        if (out / "metadata.json").exists():
            fit_s, peak = float("nan"), float("nan")
        else:
            fit_s, peak = fit_in_child(method, train_bids, out, settings[method])
        model = NormativeModel.load(out)
        metrics = evaluate(model, test, truth, test_controls)
        metrics.update(fit_seconds=fit_s, fit_peak_mb=peak)
        results[method] = metrics

    print()
    print(f"Detection benchmark: {args.healthy} training controls, {args.patients} patients, "
          f"{args.test_controls} test controls, {args.resolution:g} mm, AE {args.epochs} epochs")
    print(f"Machine: {machine()}; simulation {sim_seconds:.0f} s")
    rows = [("focal AUROC", "focal_auroc", "{:.3f}"), ("focal AUPRC", "focal_auprc", "{:.3f}"),
            ("focal best Dice", "focal_dice", "{:.3f}"), ("all-change AUROC", "all_auroc", "{:.3f}"),
            ("all-change AUPRC", "all_auprc", "{:.3f}"), ("all-change best Dice", "all_dice", "{:.3f}"),
            ("patient vs control AUROC (max)", "subject_auroc", "{:.3f}"),
            ("fit time (s)", "fit_seconds", "{:.0f}"), ("fit peak memory (MB)", "fit_peak_mb", "{:.0f}"),
            ("scoring (s/subject)", "seconds_per_subject", "{:.2f}")]
    print("| metric | zscore | ae | ae / zscore |")
    print("|---|---|---|---|")
    for name, key, fmt in rows:
        z, a = results["zscore"][key], results["ae"][key]
        ratio = a / z if z and np.isfinite(z) and np.isfinite(a) else float("nan")
        print(f"| {name} | {fmt.format(z)} | {fmt.format(a)} | {ratio:.2f} |")
    print(f"focal-lesion prevalence among evaluated voxels: {results['ae']['focal_prevalence']:.4f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": machine(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
