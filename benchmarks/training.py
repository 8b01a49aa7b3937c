"""Training time and peak memory of ``fit-normative`` as the cohort grows.

For each cohort size, simulates that many controls (3 modalities), fits the
autoencoder in a child process and reports wall time, seconds per epoch and peak
resident memory. Memory should stay flat with the number of subjects, because
subjects are preprocessed once into a disk cache and streamed by a DataLoader.

Usage::

    python benchmarks/training.py                          # 100 and 400 controls, 2 mm, 1 epoch
    python benchmarks/training.py --sizes 100 --epochs 20  # the full 100-control fit
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402
from detection import fit_in_child  # noqa: E402


def measure(args, work: Path) -> list[tuple]:
    """Simulate and fit each cohort size; returns one row per size."""
    from anomaly.simulate.cohort import simulate_cohort

    rows = []
    for n in args.sizes:
        bids = work / f"controls-{n}"
        t0 = time.perf_counter()
        if not bids.exists():
            simulate_cohort(bids, n_healthy=n, n_patients=0, resolution=args.resolution, n_jobs=2)
        sim = time.perf_counter() - t0
        seconds, peak = fit_in_child("ae", bids, work / f"model-{n}",
                                     {"resolution": args.resolution, "epochs": args.epochs, "device": "cpu"})
        rows.append((n, sim, seconds, seconds / args.epochs, peak))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400], help="cohort sizes")
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, help="keep data here (default: temporary)")
    args = parser.parse_args(argv)

    work = args.out_dir or Path(tempfile.mkdtemp(prefix="anomaly-training-"))
    try:
        rows = measure(args, work)
    finally:
        if args.out_dir is None:  # several GB at the default sizes
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"Autoencoder training, {args.resolution:g} mm, 3 modalities, {args.epochs} epoch(s); "
          f"machine: {machine()}")
    print("| controls | simulate (s) | fit incl. preprocessing (s) | s/epoch (upper bound) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for n, sim, seconds, per_epoch, peak in rows:
        print(f"| {n} | {sim:.0f} | {seconds:.0f} | {per_epoch:.0f} | {peak:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
