"""Benchmarks of the anomaly toolkit, run as modules from the repository root.

Each benchmark prints its table and, with ``--json PATH``, writes its results (settings,
numbers, targets) as JSON; :mod:`benchmarks.run_all` runs them all and builds one
Markdown report from those JSON files::

    python -m benchmarks.detection --quick --json detection.json
    python -m benchmarks.scoring --quick
    python -m benchmarks.training --sizes 10 20 --resolution 4 --epochs 1
    python -m benchmarks.crs --quick
    python -m benchmarks.run_all --quick

The benchmarks use the installed :mod:`anomaly` package through its public names only.
Targets live in :mod:`benchmarks._targets`, shared helpers in :mod:`benchmarks._common`.
"""
