"""Run every benchmark and write one Markdown report with its figures.

Runs, each as ``python -m benchmarks.<name>`` in its own child process (so that one
crash, hang or memory blow-up does not take the others with it, and each measures its
own time and memory):

1. ``detection``  voxel detection, ae vs zscore (+ focal-lesion precision-recall curves)
2. ``scoring``    scoring speed against its lower bound
3. ``training``   autoencoder training time and peak memory vs cohort size
4. ``crs``        CRS-R regressor table (+ predicted-vs-true scatter)
5. ``prepare``    ``anomaly prepare`` on native-space subjects: mask Dice, landmark and lesion
   errors, detection after registration, seconds per subject

Each writes its results as JSON (``OUT/<name>.json``, with its targets, which
:mod:`benchmarks._targets` defines); this script reads those files, renders each with
the benchmark's own ``markdown()`` and writes ``OUT/BENCHMARKS.md`` (machine, date, the
exact command, each benchmark's table, targets met / not met), the figures next to it
(``detection_pr.png``, ``crs_scatter.png``), ``summary.json`` and the children's output
in ``OUT/logs/``. A benchmark that fails is reported in the Markdown with the end of its
error output and the others still run. The Markdown is rewritten after every step, so
an interrupted run leaves the finished steps' results.

``--quick`` runs tiny settings of each (minutes on 2 cores; the numbers are a smoke
test, not results); without it each benchmark runs with its own defaults (hours on 2
cores: the detection benchmark alone trains a 20-epoch 2 mm autoencoder on 100
controls).

Usage::

    python -m benchmarks.run_all --quick
    python -m benchmarks.run_all --out benchmarks/results
    python -m benchmarks.run_all --only crs,scoring --timeout 3600
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import ROOT, cpu_model, fmt_met, load_average, usable_cores

HERE = Path(__file__).resolve().parent
STEPS = ("detection", "scoring", "training", "crs", "prepare")
TITLES = {"detection": "Voxel detection: autoencoder vs z-score",
          "scoring": "Scoring speed",
          "training": "Training time and peak memory vs cohort size",
          "crs": "CRS-R regressor",
          "prepare": "Native-space input: anomaly prepare"}


@dataclass
class Step:
    """One benchmark run: its command, outcome, results (from its JSON) and Markdown."""

    name: str
    argv: list[str]
    status: str = "pending"  # pending | skipped | ok | failed
    seconds: float = float("nan")
    returncode: int | None = None
    error: str = ""
    body: str = ""  # Markdown section body
    targets: list[dict] = field(default_factory=list)  # target, value, met (True/False/None), source
    data: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """CPU model, cores, RAM, Python, torch and anomaly versions, git commit."""
    info: dict = {"cpu": cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable_cores(),
                  "python": platform.python_version(), "platform": platform.platform(), "ram_gib": ram_gib()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # noqa: BLE001 - the report must still be written
        info["torch"] = f"unavailable ({exc})"
    try:
        import anomaly

        info["anomaly"] = getattr(anomaly, "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001
        info["anomaly"] = f"unavailable ({exc})"
    info["git"] = git_state()
    return info


def ram_gib() -> float | None:
    """Total memory in GiB from /proc/meminfo (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def git_state() -> str:
    """Short commit of the checkout, with a note when tracked files have changed."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=20)  # noqa: E731
        commit = run("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return f"{commit}{' + uncommitted changes' if dirty else ''}" if commit else "not a git checkout"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------- steps


def commands(quick: bool, out: Path, work: Path) -> dict[str, list[str]]:
    """The command line of each benchmark: ``python -m benchmarks.<name>``, JSON into ``out``."""
    def module(name: str, *args: str) -> list[str]:
        return [sys.executable, "-m", f"benchmarks.{name}", *args, "--json", str(out / f"{name}.json")]

    q = ["--quick"] if quick else []
    return {
        "detection": module("detection", *q, "--out-dir", str(work / "detection"),
                            "--figure", str(out / "detection_pr.png")),
        "scoring": module("scoring", *q),
        "training": module("training", "--out-dir", str(work / "training"),
                           *(["--sizes", "10", "20", "--resolution", "4", "--epochs", "1"] if quick else [])),
        # The synthetic tables' CRS-R is set by PET z: all columns, as in the README table.
        "crs": module("crs", *q, "--features", "all", "--global-features", "all", "--jobs", "2",
                      "--figure", str(out / "crs_scatter.png")),
        "prepare": module("prepare", *q),
    }


# files a step writes into the report folder: removed before it runs, so that none is left from an earlier run
OUTPUTS = {"detection": ("detection.json", "detection_pr.png"), "scoring": ("scoring.json",),
           "training": ("training.json",), "crs": ("crs.json", "crs_scatter.png"), "prepare": ("prepare.json",)}
# what the report says under each benchmark's figure
FIGURES = {
    "detection": ("detection_pr.png", "Precision-recall curves of the focal lesions (pooled evaluated voxels of all "
                  "test patients; voxels changed only by global hypometabolism left out):\n\n"
                  "![precision-recall curves, ae vs zscore](detection_pr.png)"),
    "crs": ("crs_scatter.png", "Out-of-fold predictions of the MIL regressor (the configuration the targets are "
            "checked on) and of ridge, against the noisy label (left) and the noise-free CRS-R (right):\n\n"
            "![predicted vs true CRS-R](crs_scatter.png)"),
}
# the part of each benchmark's JSON kept in summary.json (the rest is in OUT/<name>.json)
SUMMARY_KEYS = {"detection": ("settings", "results"), "scoring": ("rows", "writes", "grid"),
                "training": ("settings", "rows"),
                "crs": ("settings", "source", "n", "cv", "noise_floor", "loc_corr", "targets"),
                "prepare": ("settings", "rows", "auprc", "targets")}


def execute(step: Step, logs: Path, timeout: float | None) -> tuple[str, str]:
    """Run the step's command; stdout and stderr go to log files (returned as text)."""
    out_log, err_log = logs / f"{step.name}.stdout.txt", logs / f"{step.name}.stderr.txt"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(out_log, "w") as so, open(err_log, "w") as se:
        # own process group: on a timeout the benchmark and the children it started are stopped together
        proc = subprocess.Popen(step.argv, stdout=so, stderr=se, env=env, cwd=ROOT, start_new_session=True)
        try:
            step.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            step.returncode = None
            step.error = f"timed out after {timeout:.0f} s"
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)  # Ctrl-C: do not leave the benchmark running
            proc.wait()
            raise
    step.seconds = time.perf_counter() - t0
    return out_log.read_text(errors="replace"), err_log.read_text(errors="replace")


def tail(text: str, lines: int = 25) -> str:
    """The last ``lines`` non-empty lines of a child's output."""
    # progress bars rewrite one line with \r: keep what was shown last
    rows = [r.split("\r")[-1] for r in text.rstrip().splitlines()]
    return "\n".join([r for r in rows if r.strip()][-lines:])


# ----------------------------------------------------------------------------- results


def read_results(step: Step, out: Path) -> None:
    """Fill the step's data, Markdown body and targets from the JSON its benchmark wrote."""
    data = json.loads((out / f"{step.name}.json").read_text())
    step.data = {k: data.get(k) for k in SUMMARY_KEYS[step.name]}
    step.body = importlib.import_module(f"benchmarks.{step.name}").markdown(data)
    figure, caption = FIGURES.get(step.name, (None, ""))
    if figure and (out / figure).is_file():
        step.body += "\n\n" + caption
    step.targets = data.get("targets", [])


# ----------------------------------------------------------------------------- report


def write_report(path: Path, steps: list[Step], meta: dict) -> None:
    """Write ``BENCHMARKS.md`` (replaced atomically): header, targets, one section per step."""
    m = meta["machine"]
    cpu = (f"{m['cpu']}; {m['logical_cores']} logical cores ({m['usable_cores']} usable); "
           f"{m.get('ram_gib') or '?'} GiB RAM")
    mode = ("quick (tiny cohorts and settings: a smoke test, not results; targets are set for the full mode)"
            if meta["quick"] else "full (each benchmark with its defaults)")
    finished = f"finished {meta['finished']}" if meta.get("finished") else "still running"
    lines = [
        "# anomaly benchmarks", "",
        f"- **Mode**: {mode}",
        f"- **Command**: `{meta['command']}` (in `{meta['cwd']}`)",
        f"- **Date**: started {meta['started']}, {finished}"
        + (f"; {meta['total_seconds'] / 60:.1f} min in all" if meta.get("total_seconds") else ""),
        f"- **Machine**: {cpu}; {m['platform']}",
        f"- **Software**: Python {m['python']}, torch {m.get('torch')} ({m.get('torch_threads', '?')} threads"
        f"{', CUDA ' + m['cuda'] if m.get('cuda') else ', CPU only'}), anomaly {m.get('anomaly')}, git {m['git']}",
        f"- **Load average** (1, 5, 15 min) at start: {meta['load_start']}"
        + (f"; at end: {meta['load_end']}" if meta.get("load_end") else "")
        + " (other jobs may share the CPU)",
        "",
        "## Targets", "",
        "| benchmark | target | value | met | source |", "|---|---|---|---|---|",
    ]
    for s in steps:
        if s.targets:
            lines += [f"| {s.name} | {t['target']} | {t['value']} | {fmt_met(t['met'])} | {t.get('source', '')} |"
                      for t in s.targets]
        elif s.status != "pending":
            why = {"ok": "no target in its results", "skipped": "not run"}.get(s.status, s.status)
            lines.append(f"| {s.name} | (not evaluated: {why}) | | n/a | |")
    for i, s in enumerate(steps, 1):
        lines += ["", f"## {i}. {TITLES[s.name]} (`{s.name}`)", ""]
        if s.status in ("pending", "skipped"):
            lines.append("Not run yet." if s.status == "pending" else "Not run (left out with --only).")
            continue
        # paths inside the repository relative to where run_all was started, as a user would type them
        shown = [os.path.relpath(a, meta["cwd"]) if os.path.isabs(a) and a.startswith(str(ROOT)) else a
                 for a in s.argv[1:]]
        command = shlex.join(["python", *shown])
        lines += [f"Command: `{command}`; {s.seconds:.0f} s; log: [stdout](logs/{s.name}.stdout.txt), "
                  f"[stderr](logs/{s.name}.stderr.txt)", ""]
        if s.status == "failed":
            lines += [f"**FAILED**: {s.error}", "", "```text", s.body.rstrip() or "(no output)", "```"]
        else:
            lines.append(s.body)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings of every benchmark (minutes)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="report folder (default benchmarks/results)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(STEPS)}")
    parser.add_argument("--timeout", type=float, help="seconds allowed per benchmark (default: no limit)")
    parser.add_argument("--work-dir", type=Path,
                        help="keep the simulated cohorts and models here (default: a temporary folder, removed); "
                             "detection reuses the models it finds there (its fit time is then not measured)")
    return parser


def run_step(step: Step, out: Path, logs: Path, timeout: float | None) -> None:
    """Run one benchmark and read its JSON; a failure is recorded in the step, not raised."""
    for name in OUTPUTS.get(step.name, ()):  # never link a figure or results left by an earlier run
        (out / name).unlink(missing_ok=True)
    try:
        stdout, stderr = execute(step, logs, timeout)
        if step.returncode != 0:
            step.status = "failed"
            step.error = step.error or f"exit status {step.returncode}"
            step.body = tail(stderr) or tail(stdout)
        else:
            read_results(step, out)
            step.status = "ok"
    except Exception as exc:  # noqa: BLE001 - record it and go on with the next benchmark
        step.status = "failed"
        step.error = step.error or f"{type(exc).__name__}: {exc}"
        step.body = traceback.format_exc()


def main(argv: list[str] | None = None) -> int:
    """Command line; returns the exit status (1 when a benchmark failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    only = STEPS if not args.only else tuple(args.only.split(","))
    unknown = [s for s in only if s not in STEPS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")

    out = args.out.resolve()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = args.work_dir.resolve() if args.work_dir else Path(tempfile.mkdtemp(prefix="anomaly-run-all-"))
    work.mkdir(parents=True, exist_ok=True)
    report = out / "BENCHMARKS.md"
    t_start = time.perf_counter()
    meta = {"quick": args.quick,
            "command": shlex.join(["python", "-m", "benchmarks.run_all", *(sys.argv[1:] if argv is None else argv)]),
            "cwd": os.getcwd(), "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_start": load_average(), "machine": machine_info()}
    argvs = commands(args.quick, out, work)
    steps = [Step(name, argvs[name], status="pending" if name in only else "skipped") for name in STEPS]
    write_report(report, steps, meta)
    print(f"writing {report}", flush=True)
    try:
        for i, step in enumerate(s for s in steps if s.status == "pending"):
            print(f"[{i + 1}/{len(only)}] {step.name}: {shlex.join(step.argv[1:])}", flush=True)
            run_step(step, out, logs, args.timeout)
            print(f"    {step.status} in {step.seconds:.0f} s" + (f": {step.error}" if step.error else ""), flush=True)
            write_report(report, steps, meta)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
        meta.update(finished=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    total_seconds=time.perf_counter() - t_start, load_end=load_average())
        write_report(report, steps, meta)
        summary = {"meta": meta, "steps": [{"name": s.name, "status": s.status, "seconds": s.seconds,
                                            "returncode": s.returncode, "error": s.error, "targets": s.targets,
                                            "data": s.data} for s in steps]}
        (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"done in {meta['total_seconds'] / 60:.1f} min: {report}")
    failed = [s.name for s in steps if s.status == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)} (see {report})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
