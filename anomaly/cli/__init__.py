"""Stage 6: the command line, the only place that wires the stages together.

Command functions, job planning and exit statuses live here; every other package is a
library that returns values or raises :class:`anomaly.io.AnomalyInputError`. Heavy
libraries are imported inside the commands so that ``anomaly --help`` is instant.
"""

from anomaly.cli.main import main

__all__ = ["main"]
