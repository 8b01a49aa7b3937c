"""Run every benchmark and write one Markdown report with its figures.

Runs, each in its own child process (so that one crash, hang or memory blow-up does
not take the others with it, and each measures its own time and memory):

1. ``detection.py``  voxel detection, ae vs zscore (+ focal-lesion precision-recall curves)
2. ``scoring.py``    scoring speed against its lower bound
3. ``training.py``   autoencoder training time and peak memory vs cohort size
4. ``crs.py``        CRS-R regressor table (+ predicted-vs-true scatter)

and writes ``OUT/BENCHMARKS.md`` (machine, date, the exact command, each benchmark's
table, targets met / not met), the figures next to it (``detection_pr.png``,
``crs_scatter.png``), each benchmark's JSON where it has one, ``summary.json`` and the
children's output in ``OUT/logs/``. A benchmark that fails is reported in the Markdown
with the end of its error output and the others still run. The Markdown is rewritten
after every step, so an interrupted run leaves the finished steps' results.

``--quick`` runs tiny settings of each (minutes on 2 cores; the numbers are a smoke
test, not results); without it each benchmark runs with its own defaults (hours on 2
cores: the detection benchmark alone trains a 20-epoch 2 mm autoencoder on 100
controls).

Usage::

    python benchmarks/run_all.py --quick
    python benchmarks/run_all.py --out benchmarks/results
    python benchmarks/run_all.py --only crs,scoring --timeout 3600
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
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

HERE = Path(__file__).resolve().parent
STEPS = ("detection", "scoring", "training", "crs")
TITLES = {"detection": "Voxel detection: autoencoder vs z-score",
          "scoring": "Scoring speed",
          "training": "Training time and peak memory vs cohort size",
          "crs": "CRS-R regressor"}
# Peak memory of the autoencoder fit should not grow with the cohort (subjects are
# cached on disk and streamed): allowed ratio of the largest cohort's peak to the smallest's.
TRAINING_MEMORY_RATIO = 1.25


@dataclass
class Step:
    """One benchmark run: its command, outcome, parsed results and Markdown."""

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
    info: dict = {"cpu": platform.processor() or "unknown CPU", "logical_cores": os.cpu_count(),
                  "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                  "python": platform.python_version(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        info["ram_gib"] = round(kb / 1024**2, 1)
    except (OSError, AttributeError):
        info["ram_gib"] = None
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


def git_state() -> str:
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True, timeout=20)  # noqa: E731
        commit = run("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return f"{commit}{' + uncommitted changes' if dirty else ''}" if commit else "not a git checkout"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# ----------------------------------------------------------------------------- steps


def commands(quick: bool, out: Path, work: Path) -> dict[str, list[str]]:
    """The command line of each benchmark (relative to the interpreter)."""
    py = [sys.executable]
    q = ["--quick"] if quick else []
    return {
        "detection": py + [str(HERE / "detection.py"), *q, "--out-dir", str(work / "detection"),
                           "--json", str(out / "detection.json"), "--figure", str(out / "detection_pr.png")],
        "scoring": py + [str(HERE / "scoring.py"), *q],
        "training": py + [str(HERE / "training.py"), "--out-dir", str(work / "training"),
                          *(["--sizes", "10", "20", "--resolution", "4", "--epochs", "1"] if quick else [])],
        # The synthetic tables' CRS-R is set by PET z: all columns, as in the README table.
        "crs": py + [str(HERE / "crs.py"), *q, "--features", "all", "--global-features", "all", "--jobs", "2",
                     "--json", str(out / "crs.json"), "--figure", str(out / "crs_scatter.png")],
    }


OUTPUTS = {"detection": ("detection.json", "detection_pr.png"), "crs": ("crs.json", "crs_scatter.png")}


def execute(step: Step, logs: Path, timeout: float | None) -> tuple[str, str]:
    """Run the step's command; stdout and stderr go to log files (returned as text)."""
    out_log, err_log = logs / f"{step.name}.stdout.txt", logs / f"{step.name}.stderr.txt"
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    with open(out_log, "w") as so, open(err_log, "w") as se:
        # own process group: on a timeout the benchmark and the children it started are stopped together
        proc = subprocess.Popen(step.argv, stdout=so, stderr=se, env=env, cwd=HERE.parent, start_new_session=True)
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
    # progress bars rewrite one line with \r: keep what was shown last
    rows = [r.split("\r")[-1] for r in text.rstrip().splitlines()]
    return "\n".join([r for r in rows if r.strip()][-lines:])


def fmt_met(met) -> str:
    return "n/a" if met is None else ("yes" if met else "**NO**")


def import_benchmark(name: str):
    """The benchmark module (its Markdown and figure functions)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import importlib

    return importlib.import_module(name)


# ----------------------------------------------------------------------------- parsers


def parse_detection(step: Step, out: Path, stdout: str) -> None:
    data = json.loads((out / "detection.json").read_text())
    step.data = {"settings": data.get("settings"), "results": data.get("results")}
    res = {m: {k: (float("nan") if v is None else v) for k, v in r.items()} for m, r in data["results"].items()}
    data["results"] = res
    step.body = import_benchmark("detection").markdown(data)
    if (out / "detection_pr.png").is_file():
        step.body += ("\n\nPrecision-recall curves of the focal lesions (pooled evaluated voxels of all test "
                      "patients; voxels changed only by global hypometabolism left out):\n\n"
                      "![precision-recall curves, ae vs zscore](detection_pr.png)")
    z, a = res["zscore"], res["ae"]
    step.targets = [
        {"target": "ae focal AUPRC >= 1.3 x zscore focal AUPRC",
         "value": f"{a['focal_auprc']:.3f} vs {z['focal_auprc']:.3f} ({a['focal_auprc'] / z['focal_auprc']:.2f}x)",
         "met": a["focal_auprc"] >= 1.3 * z["focal_auprc"], "source": "issue #3"},
        {"target": "ae focal best Dice >= zscore", "value": f"{a['focal_dice']:.3f} vs {z['focal_dice']:.3f}",
         "met": a["focal_dice"] >= z["focal_dice"], "source": "expectation (the autoencoder is the default)"},
    ]


# a row of scoring.py's fixed-width table: model, figures, six numbers, target ("<= ..."), met
SCORING_ROW = re.compile(r"^(?P<model>\S+)\s+(?P<figures>yes|no)\s+(?P<numbers>[-\d.\s]+?)\s+"
                         r"(?P<target><=.*?)\s+(?P<met>yes|NO)\s*$")
SCORING_COLUMNS = ("s/subject", "subjects/s", "read", "forward", "bound", "ratio")


def parse_scoring(step: Step, out: Path, stdout: str) -> None:
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Scoring at")), None)
    rows = []
    for line in lines[start or 0:]:
        m = SCORING_ROW.match(line.strip())
        if m:
            numbers = m["numbers"].split()
            row = {"model": m["model"], "figures": m["figures"], "target": m["target"], "met": m["met"] == "yes"}
            row.update(zip(SCORING_COLUMNS, numbers))
            rows.append(row)
    step.data = {"rows": rows}
    parts = []
    if rows:
        cols = ["model", "figures", *[c for c in SCORING_COLUMNS if c in rows[0]], "target", "met"]
        parts += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        parts += ["| " + " | ".join(fmt_met(r[c]) if c == "met" else str(r.get(c, "")) for c in cols) + " |"
                  for r in rows]
        parts.append("")
        step.targets = [{"target": f"{r['model']} {'with' if r['figures'] == 'yes' else 'without'} figures: "
                                   + ("s/subject " + r["target"] if r["figures"] == "yes"
                                      else r["target"].replace("bound", "lower bound")),
                         "value": f"{r['s/subject']} s/subject"
                                  + ("" if r["figures"] == "yes" else f", ratio {r.get('ratio', '?')}"),
                         "met": r["met"], "source": "issue #4"} for r in rows]
    text = "\n".join(lines[start:]) if start is not None else tail(stdout, 60)
    parts += ["Output of the benchmark:", "", "```text", text.rstrip(), "```"]
    if not rows:
        parts.insert(0, "(could not parse the table: the benchmark's output is shown as it is)\n")
    step.body = "\n".join(parts)


def parse_training(step: Step, out: Path, stdout: str) -> None:
    lines = stdout.splitlines()
    head = next((line for line in lines if line.startswith("Autoencoder training")), "")
    table = [line for line in lines if line.startswith("|")]
    rows = []
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        try:
            rows.append({"controls": int(cells[0]), "simulate_s": float(cells[1]), "fit_s": float(cells[2]),
                         "s_per_epoch": float(cells[3]), "peak_mb": float(cells[4])})
        except (ValueError, IndexError):
            continue
    step.data = {"header": head, "rows": rows}
    step.body = "\n".join([head, "", *table]) if table else "```text\n" + tail(stdout, 60) + "\n```"
    if len(rows) >= 2:
        small, large = min(rows, key=lambda r: r["controls"]), max(rows, key=lambda r: r["controls"])
        ratio = large["peak_mb"] / small["peak_mb"]
        step.targets = [{"target": f"peak memory flat with cohort size ({large['controls']} vs {small['controls']} "
                                   f"controls: ratio <= {TRAINING_MEMORY_RATIO})",
                         "value": f"{large['peak_mb']:.0f} / {small['peak_mb']:.0f} MB = {ratio:.2f}",
                         "met": ratio <= TRAINING_MEMORY_RATIO,
                         "source": "benchmarks/training.py (disk cache + streaming); threshold ours"}]


def parse_crs(step: Step, out: Path, stdout: str) -> None:
    import pandas as pd

    data = json.loads((out / "crs.json").read_text())
    data["table"] = pd.DataFrame(data["table"]).astype({c: float for c in ("mae_est", "mae/floor", "loc_auroc",
                                                                           "seconds", "cpu_s")}, errors="ignore")
    step.data = {k: data[k] for k in ("settings", "source", "n", "cv", "noise_floor", "loc_corr", "targets")}
    step.body = import_benchmark("crs").markdown(data)
    if (out / "crs_scatter.png").is_file():
        step.body += ("\n\nOut-of-fold predictions of the MIL regressor (the configuration the targets are checked "
                      "on) and of ridge, against the noisy label (left) and the noise-free CRS-R (right):\n\n"
                      "![predicted vs true CRS-R](crs_scatter.png)")
    step.targets = [{**t, "source": "issue #5"} for t in data["targets"]]


PARSERS = {"detection": parse_detection, "scoring": parse_scoring, "training": parse_training, "crs": parse_crs}


# ----------------------------------------------------------------------------- report


def write_report(path: Path, steps: list[Step], meta: dict) -> None:
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
            why = {"ok": "no target could be read from its output", "skipped": "not run"}.get(s.status, s.status)
            lines.append(f"| {s.name} | (not evaluated: {why}) | | n/a | |")
    for i, s in enumerate(steps, 1):
        lines += ["", f"## {i}. {TITLES[s.name]} (`{s.name}`)", ""]
        if s.status in ("pending", "skipped"):
            lines.append("Not run yet." if s.status == "pending" else "Not run (left out with --only).")
            continue
        # paths inside the repository relative to where run_all was started, as a user would type them
        shown = [os.path.relpath(a, meta["cwd"]) if os.path.isabs(a) and a.startswith(str(HERE.parent)) else a
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny settings of every benchmark (minutes)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="report folder (default benchmarks/results)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(STEPS)}")
    parser.add_argument("--timeout", type=float, help="seconds allowed per benchmark (default: no limit)")
    parser.add_argument("--work-dir", type=Path,
                        help="keep the simulated cohorts and models here (default: a temporary folder, removed); "
                             "detection reuses the models it finds there (its fit time is then not measured)")
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
    meta = {"quick": args.quick, "command": shlex.join(["python", *sys.argv]) if argv is None
            else shlex.join(["python", "benchmarks/run_all.py", *argv]),
            "cwd": os.getcwd(), "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_start": load_average(), "machine": machine_info()}
    argvs = commands(args.quick, out, work)
    steps = [Step(name, argvs[name], status="pending" if name in only else "skipped") for name in STEPS]
    write_report(report, steps, meta)
    print(f"writing {report}", flush=True)
    try:
        for i, step in enumerate(s for s in steps if s.status == "pending"):
            for name in OUTPUTS.get(step.name, ()):  # never link a figure left by an earlier run
                (out / name).unlink(missing_ok=True)
            print(f"[{i + 1}/{len(only)}] {step.name}: {shlex.join(step.argv[1:])}", flush=True)
            try:
                stdout, stderr = execute(step, logs, args.timeout)
                if step.returncode != 0:
                    step.status = "failed"
                    step.error = step.error or f"exit status {step.returncode}"
                    step.body = tail(stderr) or tail(stdout)
                else:
                    PARSERS[step.name](step, out, stdout)
                    step.status = "ok"
            except Exception as exc:  # noqa: BLE001 - record it and go on with the next benchmark
                step.status = "failed"
                step.error = step.error or f"{type(exc).__name__}: {exc}"
                step.body = traceback.format_exc()
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
