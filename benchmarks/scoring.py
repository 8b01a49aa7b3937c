"""Scoring throughput benchmark: seconds per subject of `anomaly score` against a lower bound.

Simulates a 2 mm cohort (3 modalities: T1w, FLAIR, FDG PET), fits a voxelwise z-score
model and a small denoising autoencoder (1 epoch: its quality does not matter for
speed, its size does, so it has the default U-Net channels), then scores the patients
with the batch path of the CLI (model loaded once, next subject preprocessed in a
background thread, NIfTI files written by another) with and without figures.

For each model the *lower bound* is measured separately, per subject: reading the
subject's NIfTI files (nibabel, float32) plus, for the autoencoder, one forward pass of
the network. Targets (issue #4, :mod:`benchmarks._targets`): at most 1 s per subject
with figures, at most 2x the lower bound without.

Seconds per subject are steady-state: the model is loaded and one subject scored
(imports, template and atlas caches) before the clock starts; that setup is printed on
its own. The CPU may be shared with other jobs: the load average is printed.

Usage::

    python -m benchmarks.scoring                       # 10 patients
    python -m benchmarks.scoring --quick               # 3 patients, fewer controls
    python -m benchmarks.scoring --n-subjects 20 --out-dir /tmp/bench   # keep the outputs
    python -m benchmarks.scoring --quick --json scoring.json
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks._common import fmt_met, load_average, machine, write_json
from benchmarks._targets import scoring_target, scoring_targets


def prepare(root: Path, n_patients: int, n_controls: int, epochs: int) -> dict[str, Path]:
    """Simulate the cohort and fit both models (reused if ``root`` already has them)."""
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.simulate import simulate_cohort

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

    score = model.transform(subject.images)
    maps = [score.z[c] for c in range(len(score.modalities)) if score.present[c]] + [score.anomaly]
    t0 = time.perf_counter()
    for i, array in enumerate(maps):
        save_image(score.to_image(array), folder / f"map{i}.nii.gz")
    return time.perf_counter() - t0


def network_input(model, prep) -> tuple[np.ndarray, np.ndarray]:
    """Standardised images and presence flags of one preprocessed subject, as scoring feeds them.

    Per channel ``(x - mean) / std`` with the model's fitted statistics, zero outside
    the brain and for absent modalities (the forward pass only needs its shape and
    values, so the benchmark computes it from the model's public attributes).
    """
    present = np.asarray(prep.present, bool)
    out = (prep.data - model.channel_mean_.reshape(-1, 1, 1, 1)) / model.channel_std_.reshape(-1, 1, 1, 1)
    out *= model.mask_
    out[~present] = 0.0
    return out.astype(np.float32, copy=False), prep.present


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
            data, present = network_input(model, model.preprocess(subject.images))
            t0 = time.perf_counter()
            model.reconstruct(data, present)
            forward.append(time.perf_counter() - t0)
    r = float(np.mean(read))
    f = float(np.mean(forward)) if forward else 0.0
    return r, f, r + f


def run(model_dir: Path, bids: Path, out_root: Path, figures: bool) -> dict:
    """Score the patients as `anomaly score` does; steady-state seconds per subject."""
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.cli.score import ScoreJob, score_jobs
    from anomaly.cli.scorer import Scorer

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
        score_jobs(jobs, scorer, out, figures=figures, crs=None, progress=False)
        elapsed = time.perf_counter() - t0
    scorer.close()
    n = len(jobs)
    return {"model": model, "seconds": elapsed / n, "setup": setup, "n": n,
            "timings": {k: v / n for k, v in scorer.timings.items()}}


def measure(root: Path, n_patients: int, n_controls: int) -> dict:
    """Prepare the cohort and models, then time every model with and without figures."""
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel

    paths = prepare(root, n_patients, n_controls, epochs=1)
    patients = find_subjects(paths["bids"], group="patient")[1:]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NormativeModel.load(paths["zscore"], device="cpu")
        (root / "floor").mkdir(exist_ok=True)
        writes = float(np.mean([write_floor(model, p, root / "floor") for p in patients[:3]]))
    grid = [int(v) for v in model.grid_.shape]  # the z-score model's; the autoencoder's is the same
    for method in ("zscore", "ae"):
        model = NormativeModel.load(paths[method], device="cpu")
        read, forward, bound = lower_bound(model, patients)
        for figures in (False, True):
            result = run(paths[method], paths["bids"], root / "scores", figures)
            rows.append(table_row(method, figures, result, read, forward, bound))
            print(f"  {method:6s} figures={'yes' if figures else 'no ':3s} "
                  f"{result['seconds']:.3f} s/subject", flush=True)
    return {"n_patients": n_patients, "n_controls": n_controls, "grid": grid, "writes": writes, "rows": rows}


def table_row(method: str, figures: bool, result: dict, read: float, forward: float, bound: float) -> dict:
    """One row of the table: timings, the lower bound, their ratio and the target."""
    seconds = result["seconds"]
    ratio = seconds / bound
    target, met = scoring_target(figures, seconds, ratio)
    return {"model": method, "figures": figures, "seconds": seconds, "subjects_per_s": 1 / seconds,
            "read": read, "forward": forward, "bound": bound, "ratio": ratio, "target": target, "met": met,
            "setup": result["setup"], "n": result["n"], "timings": result["timings"]}


def main(argv: list[str] | None = None) -> dict:
    """Command line; returns the result (``rows``, ``targets``, machine and load)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-subjects", type=int, default=10, help="patients timed (default 10)")
    parser.add_argument("--out-dir", type=Path, help="keep the cohort, models and outputs here (reused)")
    parser.add_argument("--quick", action="store_true", help="3 patients, 6 controls")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    n_patients = 3 if args.quick else args.n_subjects
    n_controls = 6 if args.quick else 8

    import torch

    result = {"machine": machine(), "load_start": load_average(), "torch_threads": torch.get_num_threads()}
    print(f"machine: {result['machine']}")
    print(f"load average at start: {result['load_start']} (other jobs may share the CPU); "
          f"torch threads: {result['torch_threads']}", flush=True)
    root = args.out_dir or Path(tempfile.mkdtemp(prefix="anomaly-bench-scoring-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        result.update(measure(root, n_patients, n_controls))
    finally:
        if args.out_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    result["load_end"] = load_average()
    result["targets"] = scoring_targets(result["rows"])
    print()
    print("\n".join(report_lines(result)))
    if args.json:
        write_json(result, args.json)
    return result


def report_lines(result: dict) -> list[str]:
    """The printed report (table, write reference, setup, step timings), from the result or its JSON."""
    grid, rows = result["grid"], result["rows"]
    lines = [f"Scoring at 2 mm (grid {grid[0]}x{grid[1]}x{grid[2]}), 3 modalities (T1w, FLAIR, pet), "
             f"{result['n_patients']} simulated patients, one atlas; load average now {result['load_end']}",
             "lower bound = reading the subject's NIfTI files + one network forward pass (ae), per subject"]
    header = (f"{'model':7s} {'figures':7s} {'s/subject':>9s} {'subjects/s':>10s} {'read':>6s} {'forward':>7s} "
              f"{'bound':>6s} {'ratio':>6s}  {'target':12s} {'met':3s}")
    lines += [header, "-" * len(header)]
    lines += [f"{r['model']:7s} {'yes' if r['figures'] else 'no':7s} {r['seconds']:9.3f} {r['subjects_per_s']:10.2f} "
              f"{r['read']:6.3f} {r['forward']:7.3f} {r['bound']:6.3f} {r['ratio']:6.2f}  {r['target']:12s} "
              f"{'yes' if r['met'] else 'NO':3s}" for r in rows]
    lines += [f"for reference, writing one subject's 4 output maps (.nii.gz, zlib level 1) takes "
              f"{result['writes']:.3f} s: more than 2x the z-score model's bound by itself", "",
              "setup per run (model load, atlases, templates, one warm-up subject): "
              + ", ".join(f"{r['model']} {'fig' if r['figures'] else 'nofig'} {r['setup']:.1f} s" for r in rows),
              "mean seconds per subject by step (preprocess runs in the prefetch thread; "
              "wait_* is time the main thread waited for the background threads):"]
    for r in rows:
        steps = ", ".join(f"{k} {v:.3f}" for k, v in r["timings"].items())
        lines.append(f"  {r['model']:6s} {'figures' if r['figures'] else 'no figures':10s} {steps}")
    timings = [r["timings"] for r in rows]
    hidden = [1 - t.get("wait_preprocess", 0.0) / t["preprocess"] for t in timings if t.get("preprocess")]
    if hidden:
        lines.append(f"prefetch overlap: {100 * min(hidden):.0f}-{100 * max(hidden):.0f}% of the preprocessing "
                     f"time was hidden behind the scoring of the previous subject")
    return lines


def markdown(result: dict) -> str:
    """The table in Markdown and the printed report, from :func:`main`'s result or its JSON."""
    cols = ["model", "figures", "s/subject", "subjects/s", "read", "forward", "bound", "ratio", "target", "met"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        cells = [r["model"], "yes" if r["figures"] else "no", f"{r['seconds']:.3f}", f"{r['subjects_per_s']:.2f}",
                 f"{r['read']:.3f}", f"{r['forward']:.3f}", f"{r['bound']:.3f}", f"{r['ratio']:.2f}", r["target"],
                 fmt_met(r["met"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Output of the benchmark:", "", "```text", *report_lines(result), "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
