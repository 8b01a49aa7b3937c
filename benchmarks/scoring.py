"""Scoring throughput benchmark: seconds per subject of `anomaly score` against its floor.

Simulates a cohort (3 modalities: T1w, FLAIR, FDG PET; the patients' images rewritten
at 1.5 mm, as scanner images often come, the issue's cohort included), fits a voxelwise
z-score model and a small denoising autoencoder on a 2 mm grid (1 epoch: its quality
does not matter for speed, its size does, so it has the default U-Net channels), then
scores the patients as the command does, with and without figures, with ``--jobs 1``
(model loaded once, next subject preprocessed and quality-checked in a background
thread, output files written by another, figures drawn by a helper process; one torch
and one BLAS thread) and ``--jobs 2`` (two worker processes, each loading the model
once, one torch and one BLAS thread each).

For each model the *floor* is measured separately, per subject, in one process, in the
same run: reading the subject's NIfTI files (nibabel, float32) plus, for the
autoencoder, one forward pass of the network (the faster of one thread and all cores;
see :func:`lower_bound`). Targets (issues #4 and #15, :mod:`benchmarks._targets`):
at most 1 s per subject with figures, at most 2x the floor without.

Seconds per subject are steady-state: the model is loaded and two subjects scored
(imports, template and atlas caches, worker and helper processes started) before the
clock starts; that setup is printed on its own. The CPU may be shared with other jobs:
the load average is printed at the start and at the end.

Usage::

    python -m benchmarks.scoring                       # 10 patients, --jobs 1 and 2
    python -m benchmarks.scoring --quick               # 3 patients, fewer controls
    python -m benchmarks.scoring --input-resolution 2  # inputs on the model's voxel size
    python -m benchmarks.scoring --n-subjects 20 --out-dir /tmp/bench   # keep the outputs
    python -m benchmarks.scoring --quick --json scoring.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks._common import fmt_met, load_average, machine, write_json
from benchmarks._targets import scoring_target, scoring_targets


def prepare(root: Path, n_patients: int, n_controls: int, epochs: int, input_resolution: float = 1.5
            ) -> dict[str, Path]:
    """Simulate the cohort and fit both models (reused if ``root`` already has them).

    The images are simulated at ``input_resolution`` mm (scanner-like inputs: 1.5 mm by
    default, as in the issue's cohort) and the models use a 2 mm grid.
    """
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel
    from anomaly.simulate import simulate_cohort

    bids = root / "bids"
    if not (bids / "participants.tsv").exists():
        t0 = time.perf_counter()
        simulate_cohort(bids, n_healthy=n_controls, n_patients=n_patients + 2, resolution=2.0,
                        missing_fraction=0.0, seed=11, progress=False)
        if input_resolution != 2.0:
            resample_patients(bids, input_resolution)
        print(f"simulated {n_controls} controls and {n_patients + 2} patients (patients' images at "
              f"{input_resolution:g} mm) in {time.perf_counter() - t0:.0f} s", flush=True)
    models = {}
    for method in ("zscore", "ae", "hybrid"):
        folder = root / f"model-{method}"
        if not (folder / "metadata.json").exists():
            t0 = time.perf_counter()
            network = method != "zscore"
            extra = {"epochs": epochs, "batch_size": 2, "val_fraction": 0.3} if network else {}
            model = NormativeModel(method, resolution=2.0, seed=0, device="cpu", **extra)
            model.fit(find_subjects(bids), workdir=folder if network else None, progress=False)
            model.save(folder)
            print(f"fitted the {method} model in {time.perf_counter() - t0:.0f} s", flush=True)
        models[method] = folder
    models["bids"] = bids
    return models


def resample_patients(bids: Path, resolution: float) -> None:
    """Rewrite the patients' images at ``resolution`` mm over the same field of view.

    The simulator works in whole millimetres; scanner images often come at 1.5 mm,
    which costs more to read and to resample onto the model grid. The MRI images are
    stored as int16 with a scale factor and PET as float32, as the simulator writes them.
    """
    import nibabel as nib

    from anomaly.io import find_subjects
    from anomaly.preprocess import resample_image

    for subject in find_subjects(bids, group="patient"):
        for path in subject.images.values():
            img = nib.load(path)
            zooms = np.asarray(img.header.get_zooms()[:3], float)
            shape = np.ceil(np.asarray(img.shape[:3]) * zooms / resolution).astype(int)
            affine = img.affine.copy()
            affine[:3, :3] = np.diag(np.sign(np.diag(img.affine[:3, :3])) * resolution)
            out = resample_image(img, target_affine=affine, target_shape=shape, interpolation="continuous")
            data = np.asarray(out.dataobj, dtype=np.float32)
            new = nib.Nifti1Image(data, affine, header=img.header)
            new.set_data_dtype(img.get_data_dtype())
            new.to_filename(path)


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
    """Mean seconds per subject: reading its NIfTI files, one forward pass, and both.

    Reading is what scoring reads: nibabel's scaled float32 data of every image. The
    forward pass is timed with one torch thread and with torch's default number (all
    cores), and the faster mean is kept: the fastest the pass can be on this machine
    now (two threads on an idle machine; one when other jobs keep the cores busy, where
    two threads spin waiting for each other and would inflate the floor several times).
    The first subject is read and passed through once before the clock starts, so that
    one-off costs (torch's first call, a cold file cache) do not inflate the floor either.
    """
    import nibabel as nib
    import torch

    default_threads = torch.get_num_threads()
    read, forward = [], {threads: [] for threads in sorted({1, default_threads})}
    for subject in [subjects[0], *subjects]:
        t0 = time.perf_counter()
        for path in subject.images.values():
            np.asarray(nib.load(path).get_fdata(dtype=np.float32))
        read.append(time.perf_counter() - t0)
        if model.network_ is not None:
            data, present = network_input(model, model.preprocess(subject.images))
            for threads, seconds in forward.items():
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                model.reconstruct(data, present)
                seconds.append(time.perf_counter() - t0)
            torch.set_num_threads(default_threads)
    r = float(np.mean(read[1:]))  # without the warm-up
    f = min(float(np.mean(seconds[1:])) for seconds in forward.values()) if model.network_ is not None else 0.0
    return r, f, r + f


def forward_variants(model, repeats: int = 5) -> list[dict]:
    """Seconds of one autoencoder forward pass per CPU variant, and its largest difference.

    Variants: ``torch.no_grad`` (what scoring uses), ``torch.inference_mode``, channels-last
    memory format, and a traced, frozen TorchScript module; each with one torch thread and
    with the default number. The median of ``repeats`` runs after one warm-up.
    """
    import torch

    from anomaly.normative.network import network_input

    net = model.network_.eval()
    channels = len(model.modalities_)
    x = network_input(torch.randn(1, channels, *model.grid_.shape, generator=torch.Generator().manual_seed(0)),
                      torch.ones(1, channels, dtype=torch.bool))
    with torch.no_grad():
        reference = net(x)
    default_threads = torch.get_num_threads()

    def timed(fn) -> tuple[float, float]:
        out = fn()
        seconds = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - t0)
        return float(np.median(seconds)), float((out - reference).abs().max())

    rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        with torch.no_grad():
            rows.append(("no_grad", threads, *timed(lambda: net(x))))
        with torch.inference_mode():
            rows.append(("inference_mode", threads, *timed(lambda: net(x))))
            last = net.to(memory_format=torch.channels_last_3d)
            x_last = x.contiguous(memory_format=torch.channels_last_3d)
            rows.append(("channels_last", threads, *timed(lambda m=last, v=x_last: m(v))))
            net.to(memory_format=torch.contiguous_format)
            traced = torch.jit.freeze(torch.jit.trace(net, x).eval())
            rows.append(("jit trace+freeze", threads, *timed(lambda m=traced: m(x))))
    torch.set_num_threads(default_threads)
    return [{"variant": v, "threads": t, "seconds": sec, "max_abs_diff": diff} for v, t, sec, diff in rows]


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (all threads) and its live child processes.

    Children (worker and figure processes) are read from ``/proc`` (Linux); elsewhere
    only this process counts. Unlike wall time this hardly depends on other jobs
    sharing the CPU: on an idle machine with C cores a run cannot take less than
    CPU seconds / C.
    """
    import multiprocessing

    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _jobs_of(subjects) -> list:
    from anomaly.cli.score import ScoreJob

    return [ScoreJob(s.label, dict(s.images), s.age, s.sex) for s in subjects]


def run(model_dir: Path, bids: Path, out_root: Path, figures: bool, n_jobs: int = 1) -> dict:
    """Score the patients as `anomaly score --jobs N` does; steady-state seconds per subject.

    The first two patients warm up (imports, caches; with ``n_jobs`` 2 each worker
    process gets one, with figures the helper process starts); the others are timed.
    """
    from anomaly.io import find_subjects

    patients = find_subjects(bids, group="patient")
    warmup, timed = patients[:2], patients[2:]
    out = out_root / f"{Path(model_dir).name}-{'figures' if figures else 'nofigures'}-jobs{n_jobs}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # atlas regions too small for the grid
        runner = _run_serial if n_jobs == 1 else _run_pool
        return runner(model_dir, warmup, timed, out, figures, n_jobs)


def _run_serial(model_dir: Path, warmup, timed, out: Path, figures: bool, n_jobs: int) -> dict:
    from anomaly.cli.score import score_jobs
    from anomaly.cli.scorer import Scorer
    from anomaly.cli.workers import compute_threads, threads_per_worker
    from anomaly.normative import NormativeModel

    t0 = time.perf_counter()
    model = NormativeModel.load(model_dir, device="cpu")
    # As the command does for a batch: figures in a helper process, torch threads shared out.
    with Scorer(model) as scorer, compute_threads(threads_per_worker(2)):
        if figures:
            scorer.draw_figures_in_helper()
        score_jobs(_jobs_of(warmup), scorer, out / "warmup", figures=figures, crs=None, progress=False)
        setup = time.perf_counter() - t0
        timings: dict = {}
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        score_jobs(_jobs_of(timed), scorer, out, figures=figures, crs=None, progress=False, timings=timings)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
        timings["wait_figures"] = scorer.timings.get("wait_figures", 0.0)
    return _result(elapsed, setup, len(timed), timings, cpu)


def _run_pool(model_dir: Path, warmup, timed, out: Path, figures: bool, n_jobs: int) -> dict:
    from anomaly.cli.score import run_outcomes
    from anomaly.cli.workers import ScoreSettings, WorkerPool, threads_per_worker

    settings = ScoreSettings(model_dir=Path(model_dir), atlases=("neuromorphometrics",), out_dir=out,
                             figures=figures, device="cpu", threads=threads_per_worker(n_jobs))
    t0 = time.perf_counter()
    with WorkerPool(settings, n_jobs) as pool:
        list(pool.imap(_jobs_of(warmup)))
        setup = time.perf_counter() - t0
        timings: dict = {}
        jobs = _jobs_of(timed)
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        run_outcomes(jobs, pool.imap(jobs), out, progress=False, timings=timings)
        elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    return _result(elapsed, setup, len(timed), timings, cpu)


def _result(elapsed: float, setup: float, n: int, timings: dict, cpu: float) -> dict:
    return {"seconds": elapsed / n, "cpu": cpu / n, "setup": setup, "n": n,
            "timings": {k: v / n for k, v in timings.items()}}


def measure(root: Path, n_patients: int, n_controls: int, input_resolution: float = 1.5,
            jobs: Sequence[int] = (1, 2), methods: Sequence[str] = ("zscore", "hybrid")) -> dict:
    """Prepare the cohort and models, then time each model in ``methods`` with and without figures, per --jobs."""
    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel

    paths = prepare(root, n_patients, n_controls, epochs=1, input_resolution=input_resolution)
    patients = find_subjects(paths["bids"], group="patient")[2:]
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = NormativeModel.load(paths["zscore"], device="cpu")
        (root / "floor").mkdir(exist_ok=True)
        writes = float(np.mean([write_floor(model, p, root / "floor") for p in patients[:3]]))
    grid = [int(v) for v in model.grid_.shape]  # the z-score model's; the autoencoder's is the same
    for method in methods:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = NormativeModel.load(paths[method], device="cpu")
            read, forward, bound = lower_bound(model, patients)
        for figures in (False, True):
            for n_jobs in jobs:
                result = run(paths[method], paths["bids"], root / "scores", figures, n_jobs)
                rows.append(table_row(method, figures, n_jobs, result, read, forward, bound))
                print(f"  {method:6s} figures={'yes' if figures else 'no ':3s} jobs={n_jobs} "
                      f"{result['seconds']:.3f} s/subject", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        variants = forward_variants(NormativeModel.load(paths["ae"], device="cpu"))
    # The patients actually timed: a reused --out-dir keeps the cohort it was made with.
    return {"n_patients": len(patients), "n_controls": n_controls, "grid": grid, "writes": writes, "rows": rows,
            "input_resolution": input_resolution, "forward_variants": variants}


def table_row(method: str, figures: bool, n_jobs: int, result: dict, read: float, forward: float,
              bound: float) -> dict:
    """One row of the table: timings, the lower bound, their ratio and the target."""
    seconds = result["seconds"]
    ratio = seconds / bound
    target, met = scoring_target(figures, seconds, ratio)
    return {"model": method, "figures": figures, "jobs": n_jobs, "seconds": seconds, "subjects_per_s": 1 / seconds,
            "cpu": result["cpu"],
            "read": read, "forward": forward, "bound": bound, "ratio": ratio, "target": target, "met": met,
            "setup": result["setup"], "n": result["n"], "timings": result["timings"]}


def main(argv: list[str] | None = None) -> dict:
    """Command line; returns the result (``rows``, ``targets``, machine and load)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-subjects", type=int, default=10, help="patients timed (default 10)")
    parser.add_argument("--out-dir", type=Path, help="keep the cohort, models and outputs here (reused)")
    parser.add_argument("--quick", action="store_true", help="3 patients, 6 controls")
    parser.add_argument("--input-resolution", type=float, default=1.5,
                        help="voxel size of the patients' images in mm (default 1.5; the model grid is 2 mm)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="--jobs values to time (default 1 2)")
    parser.add_argument("--models", nargs="+", choices=("zscore", "ae", "hybrid"), default=["zscore", "hybrid"],
                        help="models to time (default zscore and hybrid, fit-normative's default)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    n_patients = 3 if args.quick else args.n_subjects
    n_controls = 6 if args.quick else 8

    import torch

    result = {"machine": machine(), "load_start": load_average(), "torch_threads": torch.get_num_threads()}
    print(f"machine: {result['machine']}")
    print(f"load average at start: {result['load_start']} (other jobs may share the CPU); "
          f"torch threads: {result['torch_threads']} (--jobs N workers: cores // N each)", flush=True)
    root = args.out_dir or Path(tempfile.mkdtemp(prefix="anomaly-bench-scoring-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        result.update(measure(root, n_patients, n_controls, args.input_resolution, args.jobs, args.models))
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


def _figures(row: dict) -> str:
    return "yes" if row["figures"] else "no"


def report_lines(result: dict) -> list[str]:
    """The printed report (table, write reference, setup, step timings), from the result or its JSON."""
    grid, rows = result["grid"], result["rows"]
    lines = [(f"Scoring with a 2 mm model (grid {grid[0]}x{grid[1]}x{grid[2]}), 3 modalities (T1w, FLAIR, pet) "
              f"given at {result.get('input_resolution', 2.0):g} mm, {result['n_patients']} simulated patients "
              f"timed, one atlas; load average at start {result['load_start']}, at end {result['load_end']}"),
             ("floor = reading the subject's NIfTI files + one network forward pass (ae; the faster of 1 torch thread "
              "and all cores), per subject, one process, after one warm-up subject")]
    header = (f"{'model':7s} {'figures':7s} {'jobs':>4s} {'s/subject':>9s} {'CPU s':>6s} {'subjects/s':>10s} "
              f"{'read':>6s} {'forward':>7s} {'floor':>6s} {'ratio':>6s}  {'target':12s} {'met':3s}")
    lines += [header, "-" * len(header)]
    lines += [(f"{r['model']:7s} {_figures(r):7s} {r.get('jobs', 1):4d} {r['seconds']:9.3f} {r.get('cpu', 0):6.3f} "
               f"{r['subjects_per_s']:10.2f} {r['read']:6.3f} {r['forward']:7.3f} {r['bound']:6.3f} "
               f"{r['ratio']:6.2f}  {r['target']:12s} {'yes' if r['met'] else 'NO':3s}") for r in rows]
    lines.append("CPU s = CPU seconds per subject of every process of the run (main, workers, figure helper): "
                 "on an idle machine with 2 cores a subject cannot take less than half of it")
    setups = ", ".join(f"{r['model']} {'fig' if r['figures'] else 'nofig'} j{r.get('jobs', 1)} {r['setup']:.1f} s"
                       for r in rows)
    lines += [(f"for reference, writing one subject's 4 output maps (.nii.gz, zlib level 1, run-length) takes "
               f"{result['writes']:.3f} s"), "",
              (f"setup per run (model load, atlases, templates, worker and figure processes, two warm-up subjects): "
               f"{setups}"),
              ("mean seconds per subject by step (jobs 1: preprocess runs in the prefetch thread, figures in a "
               "helper process, wait_* is time the main thread waited for them; jobs 2: summed over workers):")]
    for r in rows:
        steps = ", ".join(f"{k} {v:.3f}" for k, v in r["timings"].items())
        lines.append(f"  {r['model']:6s} {'figures' if r['figures'] else 'no figures':10s} j{r.get('jobs', 1)} {steps}")
    if result.get("forward_variants"):
        lines.append("autoencoder forward pass on the CPU (median seconds; largest difference from no_grad):")
        lines += [f"  {v['variant']:17s} {v['threads']} thread(s) {v['seconds']:.3f} s  {v['max_abs_diff']:.1e}"
                  for v in result["forward_variants"]]
    return lines


def markdown(result: dict) -> str:
    """The table in Markdown and the printed report, from :func:`main`'s result or its JSON."""
    cols = ["model", "figures", "jobs", "s/subject", "CPU s/subject", "subjects/s", "read", "forward", "floor",
            "ratio", "target", "met"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in result["rows"]:
        cells = [r["model"], _figures(r), str(r.get("jobs", 1)), f"{r['seconds']:.3f}", f"{r.get('cpu', 0):.3f}",
                 f"{r['subjects_per_s']:.2f}",
                 f"{r['read']:.3f}", f"{r['forward']:.3f}", f"{r['bound']:.3f}", f"{r['ratio']:.2f}", r["target"],
                 fmt_met(r["met"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Output of the benchmark:", "", "```text", *report_lines(result), "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
