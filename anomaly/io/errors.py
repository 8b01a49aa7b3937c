"""The toolkit's input errors: one line naming the file or parameter and the problem.

The command line prints the message and exits with status 2, without a traceback.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- errors


class AnomalyInputError(ValueError):
    """Bad user input: a missing, corrupt or unsuitable file or parameter.

    The message is a single line that names the file (or parameter) and the problem,
    so that the command line can print it as is.
    """

    def __init__(self, message: str) -> None:
        # Messages are printed as one line on stderr: fold any stray newline that an
        # underlying library error may have brought in.
        super().__init__(_one_line(message))


class AnomalyModelError(AnomalyInputError):
    """A model folder that is missing, incomplete, incompatible or tampered with."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def describe_error(exc: BaseException) -> str:
    """Short one-line description of a library exception, for error messages."""
    text = _one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
