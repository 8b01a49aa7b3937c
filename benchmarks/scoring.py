"""Scoring throughput benchmark: seconds per subject of `anomaly score` against a lower bound.

Simulates a 2 mm cohort (3 modalities: T1w, FLAIR, FDG PET), fits a voxelwise z-score
model and a small denoising autoencoder (1 epoch: its quality does not matter for
speed, its size does, so it has the default U-Net channels), then scores the patients
with the batch path of the CLI (model loaded once, next subject preprocessed in a
background thread, NIfTI files written by another) with and without figures.

For each model the *lower bound* is measured separately, per subject: reading the
subject's NIfTI files (nibabel, float32) plus, for the autoencoder, one forward pass of
the network. Targets (issue #4): at most 1 s per subject with figures, at most 2x the
lower bound without.

Seconds per subject are steady-state: the model is loaded and one subject scored
(imports, template and atlas caches) before the clock starts; that setup is printed on
its own. The CPU may be shared with other jobs: the load average is printed.

Usage::

    python benchmarks/scoring.py                       # 10 patients
    python benchmarks/scoring.py --quick               # 3 patients, fewer controls
    python benchmarks/scoring.py --n-subjects 20 --out-dir /tmp/bench   # keep the outputs
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def prepare(root: Path, n_patients: int, n_controls: int, epochs: int) -> dict[str, Path]:
    """Simulate the cohort and fit both models (reused if ``root`` already has them)."""
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.simulate.cohort import simulate_cohort

    bids = root / "bids"
    if not (bids / "participants.tsv").exists():
        t0 = time.perf_counter()
        simulate_cohort(bids, n_healthy=n_controls, n_patients=n_patients + 1, resolution=2.0,
                        missing_fraction=0.0, seed=11, progress=False)
        print(f"simulated {n_controls} controls and {n_patients + 1} patients at 2 mm "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
    models = {}
    for method in ("zscore", "ae"):
        folder = root / f"model-{method}"
        if not (folder / "metadata.json").exists():
            t0 = time.perf_counter()
            extra = {"epochs": epochs, "batch_size": 2, "val_fraction": 0.3} if method == "ae" else {}
            model = NormativeModel(method, resolution=2.0, seed=0, device="cpu", **extra)
            model.fit(find_subjects(bids), workdir=folder if method == "ae" else None, progress=False)
            model.save(folder)
            print(f"fitted the {method} model in {time.perf_counter() - t0:.0f} s", flush=True)
        models[method] = folder
    models["bids"] = bids
    return models


def write_floor(model, subject, folder: Path) -> float:
    """Seconds to write one subject's output maps (z per modality + anomaly, .nii.gz)."""
    from anomaly.io import save_image

    score = model.score(subject.images)
    maps = [score.z[c] for c in range(len(score.modalities)) if score.present[c]] + [score.anomaly]
    t0 = time.perf_counter()
    for i, array in enumerate(maps):
        save_image(score.to_image(array), folder / f"map{i}.nii.gz")
    return time.perf_counter() - t0


def lower_bound(model, subjects) -> tuple[float, float, float]:
    """Mean seconds per subject: reading its NIfTI files, one forward pass, and both."""
    import nibabel as nib

    read, forward = [], []
    for subject in subjects:
        t0 = time.perf_counter()
        for path in subject.images.values():
            np.asarray(nib.load(path).get_fdata(dtype=np.float32))
        read.append(time.perf_counter() - t0)
        if model.method == "ae":
            from anomaly.normative.calibration import standardise

            prep = model.preprocess(subject.images)
            std = standardise(prep.data, prep.present, model.channel_mean_, model.channel_std_, model.mask_)
            t0 = time.perf_counter()
            model.reconstruct(std, prep.present)
            forward.append(time.perf_counter() - t0)
    r = float(np.mean(read))
    f = float(np.mean(forward)) if forward else 0.0
    return r, f, r + f


def run(model_dir: Path, bids: Path, out_root: Path, figures: bool) -> dict:
    """Score the patients as `anomaly score` does; steady-state seconds per subject."""
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.cli.scoring import Scorer, ScoreJob, _score_jobs

    patients = find_subjects(bids, group="patient")
    warmup, timed = patients[0], patients[1:]
    t0 = time.perf_counter()
    model = NormativeModel.load(model_dir, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # atlas regions too small for the grid
        scorer = Scorer(model)
        out = out_root / f"{model.method}-{'figures' if figures else 'nofigures'}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        scorer.score_subject(warmup.label, warmup.images, out / "warmup", age=warmup.age, sex=warmup.sex,
                             figures=figures)
        setup = time.perf_counter() - t0
        scorer.timings.clear()
        jobs = [ScoreJob(s.label, dict(s.images), s.age, s.sex) for s in timed]
        t0 = time.perf_counter()
        _score_jobs(jobs, scorer, out, figures=figures, crs=None, progress=False)
        elapsed = time.perf_counter() - t0
    scorer.close()
    n = len(jobs)
    return {"model": model, "seconds": elapsed / n, "setup": setup, "n": n,
            "timings": {k: v / n for k, v in scorer.timings.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-subjects", type=int, default=10, help="patients timed (default 10)")
    parser.add_argument("--out-dir", type=Path, help="keep the cohort, models and outputs here (reused)")
    parser.add_argument("--quick", action="store_true", help="3 patients, 6 controls")
    args = parser.parse_args(argv)
    n_patients = 3 if args.quick else args.n_subjects
    n_controls = 6 if args.quick else 8

    import torch

    print(f"machine: {machine()}")
    print(f"load average at start: {load_average()} (other jobs may share the CPU); "
          f"torch threads: {torch.get_num_threads()}", flush=True)
    root = args.out_dir or Path(tempfile.mkdtemp(prefix="anomaly-bench-scoring-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        paths = prepare(root, n_patients, n_controls, epochs=1)
        from anomaly.io import find_subjects
        from anomaly.normative import NormativeModel

        patients = find_subjects(paths["bids"], group="patient")[1:]
        rows = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = NormativeModel.load(paths["zscore"], device="cpu")
            (root / "floor").mkdir(exist_ok=True)
            writes = float(np.mean([write_floor(model, p, root / "floor") for p in patients[:3]]))
        for method in ("zscore", "ae"):
            model = NormativeModel.load(paths[method], device="cpu")
            read, forward, bound = lower_bound(model, patients)
            for figures in (False, True):
                result = run(paths[method], paths["bids"], root / "scores", figures)
                rows.append((method, figures, result, read, forward, bound))
                print(f"  {method:6s} figures={'yes' if figures else 'no ':3s} "
                      f"{result['seconds']:.3f} s/subject", flush=True)
        print_table(rows, n_patients, writes)
    finally:
        if args.out_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


def print_table(rows, n_patients: int, writes: float) -> None:
    grid = rows[0][2]["model"].grid_.shape
    print()
    print(f"Scoring at 2 mm (grid {grid[0]}x{grid[1]}x{grid[2]}), 3 modalities (T1w, FLAIR, pet), "
          f"{n_patients} simulated patients, one atlas; load average now {load_average()}")
    print("lower bound = reading the subject's NIfTI files + one network forward pass (ae), per subject")
    header = (f"{'model':7s} {'figures':7s} {'s/subject':>9s} {'subjects/s':>10s} {'read':>6s} {'forward':>7s} "
              f"{'bound':>6s} {'ratio':>6s}  {'target':12s} {'met':3s}")
    print(header)
    print("-" * len(header))
    for method, figures, result, read, forward, bound in rows:
        seconds = result["seconds"]
        ratio = seconds / bound
        if figures:
            target, met = "<= 1 s", seconds <= 1.0
        else:
            target, met = "<= 2x bound", ratio <= 2.0
        print(f"{method:7s} {'yes' if figures else 'no':7s} {seconds:9.3f} {1 / seconds:10.2f} {read:6.3f} "
              f"{forward:7.3f} {bound:6.3f} {ratio:6.2f}  {target:12s} {'yes' if met else 'NO':3s}")
    print(f"for reference, writing one subject's 4 output maps (.nii.gz, zlib level 1) takes {writes:.3f} s: "
          f"more than 2x the z-score model's bound by itself")
    print()
    print("setup per run (model load, atlases, templates, one warm-up subject): "
          + ", ".join(f"{m} {'fig' if f else 'nofig'} {r['setup']:.1f} s" for m, f, r, *_ in rows))
    print("mean seconds per subject by step (preprocess runs in the prefetch thread; "
          "wait_* is time the main thread waited for the background threads):")
    for method, figures, result, *_ in rows:
        steps = ", ".join(f"{k} {v:.3f}" for k, v in result["timings"].items())
        print(f"  {method:6s} {'figures' if figures else 'no figures':10s} {steps}")
    steps = [row[2]["timings"] for row in rows]
    hidden = [1 - t.get("wait_preprocess", 0.0) / t["preprocess"] for t in steps if t.get("preprocess")]
    if hidden:
        print(f"prefetch overlap: {100 * min(hidden):.0f}-{100 * max(hidden):.0f}% of the preprocessing time "
              f"was hidden behind the scoring of the previous subject")


if __name__ == "__main__":
    sys.exit(main())
