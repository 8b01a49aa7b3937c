"""Child process of :func:`benchmarks._common.fit_in_child`: fit one normative model.

Usage (from the repository root)::

    python -m benchmarks._fit METHOD BIDS OUT SETTINGS_JSON REPORT_JSON

Fits ``NormativeModel(METHOD, **SETTINGS)`` (less the fit option ``drop_qc_outliers``) on the controls of ``BIDS`` (work folder and
model folder ``OUT``) and writes ``{"seconds": ..., "peak_mb": ...}`` to ``REPORT_JSON``:
the seconds of fit and save and this process's peak resident memory. It imports no more
than the fit needs, so that the peak is the fit's.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", help="normative method (ae or zscore)")
    parser.add_argument("bids", help="BIDS dataset whose controls are fitted")
    parser.add_argument("out", help="work and model folder")
    parser.add_argument("settings", type=json.loads, help="NormativeModel keyword arguments as JSON")
    parser.add_argument("report", type=Path, help="JSON file written with seconds and peak_mb")
    args = parser.parse_args(argv)

    from anomaly.io import find_subjects
    from anomaly.normative import NormativeModel

    t = time.perf_counter()
    settings = dict(args.settings)
    # Fit options (not estimator parameters), e.g. drop_qc_outliers for realistic cohorts.
    options = {k: settings.pop(k) for k in ("drop_qc_outliers",) if k in settings}
    model = NormativeModel(args.method, **settings)
    model.fit(find_subjects(args.bids, group="control"), workdir=args.out, progress=True, **options)
    model.save(args.out)
    seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.report.write_text(json.dumps({"seconds": seconds, "peak_mb": peak_mb}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
