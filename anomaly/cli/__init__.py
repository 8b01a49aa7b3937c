"""Stage 7: the command line, the only place that wires the stages together.

Every other package is a library that returns values or raises
:class:`anomaly.io.AnomalyInputError`; here they become commands:

- :mod:`~anomaly.cli.main`      ``main(argv)``: parse, run one command, return its exit status
- :mod:`~anomaly.cli.parser`    the argument parser, one function per subcommand
- :mod:`~anomaly.cli.status`    exit statuses and the guard that turns errors into them
- :mod:`~anomaly.cli.commands`  command functions of simulate, fit-normative, score, fit-crs,
  predict and group (arguments in, library calls, exit status out)
- :mod:`~anomaly.cli.score`     ``anomaly score``: jobs, shards, batch scoring, the output index
- :mod:`~anomaly.cli.scorer`    :class:`~anomaly.cli.scorer.Scorer`: one subject's maps,
  region tables, values and report
- :mod:`~anomaly.cli.crs`       ``fit-crs``, ``predict``, ``group``
- :mod:`~anomaly.cli.demo`      ``anomaly demo``: the pipeline's commands on a simulated cohort

Heavy libraries are imported inside the command functions so that ``anomaly --help``
is instant.
"""

from anomaly.cli.main import main

__all__ = ["main"]
