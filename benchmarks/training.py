"""Training time and peak memory of ``fit-normative`` as the cohort grows.

For each cohort size, simulates that many controls (3 modalities), fits the
autoencoder in a child process and reports wall time, seconds per epoch and peak
resident memory. Memory should stay flat with the number of subjects, because
subjects are preprocessed once into a disk cache and streamed by a DataLoader
(target: :data:`benchmarks._targets.TRAINING_MEMORY_RATIO`).

Usage::

    python -m benchmarks.training                          # 100 and 400 controls, 2 mm, 1 epoch
    python -m benchmarks.training --sizes 100 --epochs default --method hybrid  # fit-normative's defaults
    python -m benchmarks.training --sizes 10 20 --resolution 4 --json training.json
    python -m benchmarks.training --sizes 100 --epochs 2 --method hybrid --params '{"augment": 1}'
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks._common import fit_in_child, machine, parse_model_params, write_json
from benchmarks._targets import training_targets


def measure(args, work: Path) -> list[dict]:
    """Simulate and fit each cohort size; returns one row per size.

    Each row: ``controls``, ``simulate_s``, ``fit_s`` (incl. preprocessing),
    ``s_per_epoch`` (an upper bound) and ``peak_mb`` (peak RSS of the fit).
    """
    from anomaly.simulate import simulate_cohort

    rows = []
    for n in args.sizes:
        bids = work / f"controls-{n}"
        t0 = time.perf_counter()
        if not bids.exists():
            simulate_cohort(bids, n_healthy=n, n_patients=0, resolution=args.resolution, n_jobs=2)
        sim = time.perf_counter() - t0
        seconds, peak = fit_in_child(args.method, bids, work / f"model-{n}",
                                     {"resolution": args.resolution, "device": "cpu", **args.params,
                                      **({} if args.epochs is None else {"epochs": args.epochs})})
        epochs = trained_epochs(work / f"model-{n}")
        rows.append({"controls": n, "simulate_s": sim, "fit_s": seconds, "epochs": epochs,
                     "s_per_epoch": seconds / max(epochs, 1), "peak_mb": peak})
    return rows


def trained_epochs(model_dir: Path) -> int:
    """Epochs the model's (first) network trained for, from its training history."""
    from anomaly.normative.modelio import read_metadata

    history = read_metadata(model_dir).get("history", [])
    return sum(1 for row in history if row.get("network", 1) == 1)


def epochs_option(text: str) -> int | None:
    """``--epochs``: a whole number >= 1, or "default" (the toolkit's own training length)."""
    if text == "default":
        return None
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def markdown(result: dict) -> str:
    """Header line and the Markdown table (as printed), from :func:`main`'s result or its JSON."""
    st = result["settings"]
    params = f", model params {json.dumps(st['params'])}" if st.get("params") else ""
    header = (f"Normative fit ({st.get('method', 'ae')}), {st['resolution']:g} mm, 3 modalities, "
              f"epochs {st['epochs'] or 'default'}{params}; machine: {result['machine']}")
    lines = [header, "",
             ("| controls | simulate (s) | fit incl. preprocessing (s) | epochs per network | s/epoch (upper bound) "
              "| peak RSS (MB) |"),
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['controls']} | {r['simulate_s']:.0f} | {r['fit_s']:.0f} | {r.get('epochs', st['epochs'])} "
              f"| {r['s_per_epoch']:.0f} | {r['peak_mb']:.0f} |" for r in result["rows"]]
    return "\n".join(lines)


def main(argv=None) -> dict:
    """Command line; returns the result (``settings``, ``machine``, ``rows``, ``targets``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400], help="cohort sizes")
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--epochs", type=epochs_option, default=1,
                        help="training epochs, or 'default' for fit-normative's own length (default 1)")
    parser.add_argument("--method", default="ae", choices=("ae", "hybrid", "auto"),
                        help="normative method fitted (default ae); hybrid and auto add the voxelwise "
                             "calibration, and every network method runs the self-check")
    parser.add_argument("--params", metavar="JSON", default="{}",
                        help="extra NormativeModel keyword arguments, as a JSON object, e.g. "
                             "'{\"channels\": [32, 64, 128, 256], \"augment\": 1}' (default: none)")
    parser.add_argument("--out-dir", type=Path, help="keep data here (default: temporary)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        args.params = parse_model_params(args.params, reserved=("method", "resolution", "epochs"))
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))

    work = args.out_dir or Path(tempfile.mkdtemp(prefix="anomaly-training-"))
    try:
        rows = measure(args, work)
    finally:
        if args.out_dir is None:  # several GB at the default sizes
            shutil.rmtree(work, ignore_errors=True)
    result = {"settings": {"sizes": args.sizes, "resolution": args.resolution, "epochs": args.epochs,
                           "method": args.method, "params": args.params},
              "machine": machine(), "rows": rows, "targets": training_targets(rows)}
    print()
    print(markdown(result))
    if args.json:
        write_json(result, args.json)
    return result


if __name__ == "__main__":
    main()
