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

    python -m benchmarks.detection                  # 100 controls, 50 patients, 2 mm
    python -m benchmarks.detection --quick          # 20 controls, 10 patients, 4 mm
    python -m benchmarks.detection --quick --json det.json --figure det_pr.png

``run(...)`` returns the same results as a dict (metrics, precision-recall curves of
the focal lesions, targets); ``--json`` writes it for :mod:`benchmarks.run_all`, which
renders it with :func:`markdown`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from benchmarks._common import fit_in_child, machine, nan_for_none, save_figure, write_json
from benchmarks._targets import detection_targets


def best_dice(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best Dice over all thresholds (from the precision-recall curve)."""
    precision, recall, _ = precision_recall_curve(labels, scores)
    return _best_dice(precision, recall)


def _best_dice(precision: np.ndarray, recall: np.ndarray) -> float:
    dice = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(dice.max())


def subsample_curve(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray,
                    n_points: int = 400) -> dict:
    """About ``2 n_points`` points of a precision-recall curve, enough to plot it.

    Keeps points evenly spaced along the curve's index (dense where the scores are) and
    the first point at or past each of ``n_points`` evenly spaced recall levels (so
    that the steep high-recall end is drawn too), plus both ends.
    """
    n = len(recall)
    idx = np.linspace(0, n - 1, min(n, n_points)).round().astype(int)
    levels = np.linspace(0.0, 1.0, n_points)
    # recall is non-increasing along sklearn's output: search on the reversed array
    at_level = n - 1 - np.searchsorted(recall[::-1], levels, side="left")
    idx = np.unique(np.clip(np.r_[0, idx, at_level, n - 1], 0, n - 1))
    thr = np.r_[thresholds, np.nan]  # the last point (recall 0) has no threshold
    return {"precision": precision[idx].round(5).tolist(), "recall": recall[idx].round(5).tolist(),
            "threshold": [None if not np.isfinite(t) else round(float(t), 5) for t in thr[idx]]}


def evaluate(model, subjects, truth_dir: Path, controls, curve_points: int = 400) -> dict:
    """Voxel and subject metrics of one fitted model.

    The returned dict also holds ``"pr_focal"``: the precision-recall curve of the
    pooled focal-lesion voxels, subsampled to about ``2 curve_points`` points.
    """
    from anomaly.preprocess import resample_to_grid

    focal_scores, focal_labels, all_scores, all_labels = [], [], [], []
    max_patient, max_control = [], []
    t0 = time.perf_counter()
    for s in subjects:
        score = model.transform(s.images, age=s.age, sex=s.sex)
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
        score = model.transform(s.images, age=s.age, sex=s.sex)
        max_control.append(float(score.anomaly.max()))
    seconds = (time.perf_counter() - t0) / (len(subjects) + len(controls))
    fs, fl = np.concatenate(focal_scores), np.concatenate(focal_labels)
    als, al = np.concatenate(all_scores), np.concatenate(all_labels)
    y = np.r_[np.ones(len(max_patient)), np.zeros(len(max_control))]
    precision, recall, thresholds = precision_recall_curve(fl, fs)
    return {
        "focal_auroc": roc_auc_score(fl, fs), "focal_auprc": average_precision_score(fl, fs),
        "focal_dice": _best_dice(precision, recall), "focal_prevalence": float(fl.mean()),
        "all_auroc": roc_auc_score(al, als), "all_auprc": average_precision_score(al, als),
        "all_dice": best_dice(al, als),
        "subject_auroc": roc_auc_score(y, np.r_[max_patient, max_control]) if max_control else float("nan"),
        "seconds_per_subject": seconds,
        "pr_focal": subsample_curve(precision, recall, thresholds, curve_points),
    }


ROWS = [("focal AUROC", "focal_auroc", "{:.3f}"), ("focal AUPRC", "focal_auprc", "{:.3f}"),
        ("focal best Dice", "focal_dice", "{:.3f}"), ("all-change AUROC", "all_auroc", "{:.3f}"),
        ("all-change AUPRC", "all_auprc", "{:.3f}"), ("all-change best Dice", "all_dice", "{:.3f}"),
        ("patient vs control AUROC (max)", "subject_auroc", "{:.3f}"),
        ("fit time (s)", "fit_seconds", "{:.0f}"), ("fit peak memory (MB)", "fit_peak_mb", "{:.0f}"),
        ("scoring (s/subject)", "seconds_per_subject", "{:.2f}")]


def run(*, healthy: int = 100, patients: int = 50, test_controls: int = 20, resolution: float = 2.0,
        epochs: int = 20, seed: int = 0, out_dir: Path | None = None, curve_points: int = 400) -> dict:
    """Simulate, fit both models, evaluate them; return the results as a dict.

    Returns
    -------
    dict
        ``settings`` (the arguments), ``machine``, ``sim_seconds``, ``results`` (per
        method: the metrics of :func:`evaluate`, ``fit_seconds``, ``fit_peak_mb``;
        NaN fit values when the model was reused from ``out_dir``), ``pr_curves``
        (per method: ``precision``, ``recall``, ``threshold`` lists of the focal-lesion
        precision-recall curve, subsampled for plotting) and ``targets``
        (:func:`benchmarks._targets.detection_targets`).
    """
    settings = {"healthy": healthy, "patients": patients, "test_controls": test_controls,
                "resolution": resolution, "epochs": epochs, "seed": seed,
                "out_dir": None if out_dir is None else str(out_dir)}
    work = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="anomaly-detection-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(work, settings, curve_points)
    finally:
        if out_dir is None:  # a temporary cohort and models: hundreds of MB at 2 mm
            shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, settings: dict, curve_points: int) -> dict:
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.simulate import simulate_cohort

    healthy, patients, test_controls = settings["healthy"], settings["patients"], settings["test_controls"]
    resolution, epochs, seed = settings["resolution"], settings["epochs"], settings["seed"]
    train_bids, test_bids = work / "train", work / "test"
    t0 = time.perf_counter()
    if not train_bids.exists():
        simulate_cohort(train_bids, n_healthy=healthy, n_patients=0, seed=seed,
                        resolution=resolution, n_jobs=2)
    if not test_bids.exists():
        simulate_cohort(test_bids, n_healthy=test_controls, n_patients=patients,
                        seed=seed + 1, resolution=resolution, missing_fraction=0.0, n_jobs=2)
    sim_seconds = time.perf_counter() - t0

    test = find_subjects(test_bids, group="patient")
    test_controls_ = find_subjects(test_bids, group="control")
    truth = test_bids / "derivatives" / "simulation"
    method_settings = {
        "zscore": {"resolution": resolution, "seed": seed, "device": "cpu"},
        "ae": {"resolution": resolution, "seed": seed, "device": "cpu", "epochs": epochs},
    }
    results, curves = {}, {}
    for method in ("zscore", "ae"):
        out = work / f"model-{method}"
        if (out / "metadata.json").exists():
            fit_s, peak = float("nan"), float("nan")
        else:
            fit_s, peak = fit_in_child(method, train_bids, out, method_settings[method])
        model = NormativeModel.load(out)
        metrics = evaluate(model, test, truth, test_controls_, curve_points=curve_points)
        curves[method] = metrics.pop("pr_focal")
        metrics.update(fit_seconds=fit_s, fit_peak_mb=peak)
        results[method] = {k: float(v) for k, v in metrics.items()}
    return {"settings": settings, "machine": machine(), "sim_seconds": sim_seconds,
            "results": results, "pr_curves": curves, "targets": detection_targets(results)}


def markdown(result: dict) -> str:
    """The results table (Markdown) with its header lines, from :func:`run` or its JSON."""
    st = result["settings"]
    res = {method: nan_for_none(metrics) for method, metrics in result["results"].items()}
    lines = [f"Detection benchmark: {st['healthy']} training controls, {st['patients']} patients, "
             f"{st['test_controls']} test controls, {st['resolution']:g} mm, AE {st['epochs']} epochs",
             "", f"Machine: {result['machine']}; simulation {result['sim_seconds']:.0f} s", "",
             "| metric | zscore | ae | ae / zscore |", "|---|---|---|---|"]
    for name, key, fmt in ROWS:
        z, a = res["zscore"][key], res["ae"][key]
        ratio = a / z if z and np.isfinite(z) and np.isfinite(a) else float("nan")
        lines.append(f"| {name} | {fmt.format(z)} | {fmt.format(a)} | {ratio:.2f} |")
    lines += ["", f"focal-lesion prevalence among evaluated voxels: {res['ae']['focal_prevalence']:.4f}"]
    return "\n".join(lines)


def plot_pr_curves(result: dict, path: Path) -> Path:
    """Precision-recall curves of the focal lesions, ae vs zscore, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st, res = result["settings"], result["results"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    try:
        for method, colour in (("zscore", "tab:blue"), ("ae", "tab:orange")):
            c, m = result["pr_curves"][method], res[method]
            ax.plot(c["recall"], c["precision"], color=colour, lw=1.6, drawstyle="steps-post",
                    label=f"{method}: AUPRC {m['focal_auprc']:.3f}, best Dice {m['focal_dice']:.3f}")
        prevalence = res["ae"]["focal_prevalence"]
        ax.axhline(prevalence, color="0.5", ls=":", lw=1, label=f"chance (prevalence {prevalence:.4f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall (focal-lesion voxels)")
        ax.set_ylabel("precision")
        ax.set_title(f"Focal lesions, pooled voxels of {st['patients']} patients\n"
                     f"{st['healthy']} training controls, {st['resolution']:g} mm, AE {st['epochs']} epochs",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    except BaseException:
        plt.close(fig)
        raise
    return save_figure(fig, path)


def main(argv=None) -> dict:
    """Command line; returns the :func:`run` result (``args`` added)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--healthy", type=int, default=100, help="training controls (default 100)")
    parser.add_argument("--patients", type=int, default=50, help="test patients (default 50)")
    parser.add_argument("--test-controls", type=int, default=20, help="held-out test controls (default 20)")
    parser.add_argument("--resolution", type=float, default=2.0, help="mm (default 2)")
    parser.add_argument("--epochs", type=int, default=20, help="autoencoder epochs (default 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, help="keep data and models here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the results (and the PR curves) as JSON")
    parser.add_argument("--figure", type=Path, help="also save the focal-lesion precision-recall curves (PNG)")
    parser.add_argument("--quick", action="store_true", help="20 controls, 10 patients, 4 mm, 8 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.healthy, args.patients, args.test_controls = 20, 10, 5
        args.resolution, args.epochs = 4.0, 8

    result = run(healthy=args.healthy, patients=args.patients, test_controls=args.test_controls,
                 resolution=args.resolution, epochs=args.epochs, seed=args.seed, out_dir=args.out_dir)
    result["args"] = {k: str(v) for k, v in vars(args).items()}
    print()
    print(markdown(result))
    print("targets: " + "; ".join(f"{t['target']}: {t['value']} ({'met' if t['met'] else 'NOT met'})"
                                  for t in result["targets"]))
    if args.json:
        write_json(result, args.json)
    if args.figure:
        print(f"precision-recall curves: {plot_pr_curves(result, args.figure)}")
    return result


if __name__ == "__main__":
    main()
