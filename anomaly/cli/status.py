"""Exit statuses of ``anomaly`` and the guard that turns errors into them.

Every command ends with one of three statuses: :data:`EXIT_OK`, :data:`EXIT_BAD_INPUT`
(an :class:`anomaly.io.AnomalyInputError`, or the user's environment refusing a write:
one line on stderr, no traceback unless ``--debug``) or :data:`EXIT_INTERRUPTED`
(Ctrl-C, or an interrupted training that ``--resume`` can continue).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class CommandFailed(Exception):
    """A command that ran other commands (the demo) stops at a failed one.

    The failed command has printed its own error line; ``status`` is its exit status.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def run_guarded(command: str, run: Callable[[], int], *, debug: bool = False) -> int:
    """Run one command and return its exit status; errors become one stderr line.

    Parameters
    ----------
    command : str
        Subcommand name, for the messages (``anomaly <command>: error: ...``).
    run : callable
        The command, without arguments; returns its exit status.
    debug : bool
        Re-raise errors (full traceback) instead of the one-line message.
    """
    from anomaly.io import AnomalyInputError

    try:
        return run()
    except AnomalyInputError as exc:
        if debug:
            raise
        print(f"anomaly {command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except CommandFailed as exc:
        if debug:
            raise
        print(f"anomaly {command}: error: {exc}", file=sys.stderr)
        return exc.status
    except OSError as exc:
        # Unwritable output folder, full disk...: the user's environment, not a bug.
        if debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"anomaly {command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"anomaly {command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        from anomaly.normative.trainer import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted):
            print(f"anomaly {command}: {exc}; rerun with --resume to continue", file=sys.stderr)
            return EXIT_INTERRUPTED
        raise
