"""Stage 8: the command line, the only place that wires the stages together.

Every other package is a library that returns values or raises
:class:`anomaly.io.AnomalyInputError`; here they become commands:

- :mod:`~anomaly.cli.main`      ``main(argv)``: parse, run one command, return its exit status
- :mod:`~anomaly.cli.parser`    the argument parser, one function per subcommand
- :mod:`~anomaly.cli.status`    exit statuses and the guard that turns errors into them
- :mod:`~anomaly.cli.commands`  command functions of simulate, fit-normative, score, fit-crs,
  predict and group (arguments in, library calls, exit status out)
- :mod:`~anomaly.cli.prepare`   ``anomaly prepare``: native-space scans registered to MNI152
- :mod:`~anomaly.cli.calibrate` ``anomaly calibrate``: a model's z statistics from local controls
- :mod:`~anomaly.cli.score`     ``anomaly score``: jobs, shards, batch scoring, the output index
- :mod:`~anomaly.cli.inputs`    every subject's inputs checked from their headers before any work
- :mod:`~anomaly.cli.progress`  progress bars on a terminal, plain log lines elsewhere
- :mod:`~anomaly.cli.workers`   ``--jobs N``: worker processes that each load the model once
- :mod:`~anomaly.cli.figureproc` figures and reports drawn in a helper process
- :mod:`~anomaly.cli.scorer`    :class:`~anomaly.cli.scorer.Scorer`: one subject's maps,
  region tables, values and report
- :mod:`~anomaly.cli.qc`        ``anomaly qc``: the cohort's QC table and page
- :mod:`~anomaly.cli.crs`       ``fit-crs``, ``predict``, ``group``
- :mod:`~anomaly.cli.demo`      ``anomaly demo``: the pipeline's commands on a simulated cohort

Heavy libraries are imported inside the command functions so that ``anomaly --help``
is instant.
"""

from anomaly.cli.main import main

__all__ = ["main"]
