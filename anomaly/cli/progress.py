"""Per-subject progress of a batch: a bar on a terminal, plain log lines elsewhere.

A progress bar redrawn with carriage returns is right on a terminal and unreadable in a
batch log or a SLURM output file. :class:`SubjectLog` looks at where stderr goes:

- a terminal: a tqdm bar (errors are written above it, the bar stays);
- anything else: one line per finished subject, ``sub-01  0.84 s  ok`` (the label
  padded to the batch's longest, seconds of that subject, status), flushed at once;
- ``enabled=False`` (``--quiet``): nothing but the error lines.

Error lines are ``anomaly <command>: error: sub-<label>: <message>``, the format of
every other error of the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

#: Status of a subject scored without error.
OK = "ok"
#: Status of a subject whose scoring failed (its error line says why).
FAILED = "failed"


class SubjectLog:
    """Report subjects as they finish.

    Parameters
    ----------
    labels : sequence of str
        Labels (without ``sub-``) of the subjects that will be reported.
    command : str
        Subcommand named in error lines.
    enabled : bool
        False for ``--quiet``: only errors are written.
    stream : text file, optional
        Where to write (default ``sys.stderr``, read when the log is created).
    terminal : bool, optional
        Whether ``stream`` is a terminal (default: ``stream.isatty()``).
    """

    def __init__(self, labels: Sequence[str], *, command: str = "score", enabled: bool = True,
                 stream: TextIO | None = None, terminal: bool | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.command = command
        self.width = max((len(label) for label in labels), default=0) + len("sub-")
        if terminal is None:
            isatty = getattr(self.stream, "isatty", None)
            terminal = bool(isatty and isatty())
        self.mode = "off" if not enabled else ("bar" if terminal else "lines")
        self._bar = None
        if self.mode == "bar" and labels:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(labels), desc=command.replace("score", "scoring"), unit="subject",
                             file=self.stream)

    def line(self, label: str, seconds: float, status: str) -> str:
        """The log line of one subject (without the newline).

        Parameters
        ----------
        label : str
            Subject label without ``sub-``.
        seconds : float
            Time the subject took.
        status : str
            :data:`OK` or :data:`FAILED`.
        """
        return f"{'sub-' + label:<{self.width}}  {seconds:5.2f} s  {status}"

    def done(self, label: str, seconds: float, status: str = OK) -> None:
        """One subject finished (arguments as for :meth:`line`)."""
        if self._bar is not None:
            self._bar.update(1)
        elif self.mode == "lines":
            self._write(self.line(label, seconds, status))

    def error(self, label: str, message: str) -> None:
        """Write the error line of one subject (also with ``enabled=False``).

        Parameters
        ----------
        label : str
            Subject label without ``sub-``.
        message : str
            The one-line problem, naming the file.
        """
        self._write(f"anomaly {self.command}: error: sub-{label}: {message}")

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar (if any)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> SubjectLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["FAILED", "OK", "SubjectLog"]
