"""Command line interface: ``anomaly <command> ...`` (also ``python -m anomaly``).

:func:`main` parses the arguments (:mod:`anomaly.cli.parser`) and runs one command
function (:mod:`anomaly.cli.commands`, :mod:`anomaly.cli.demo`) under the error guard
of :mod:`anomaly.cli.status`: bad input ends with one line on stderr and exit status 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from anomaly.cli.commands import PIPELINE
from anomaly.cli.parser import bids_app_argv, build_parser
from anomaly.cli.status import EXIT_BAD_INPUT, EXIT_OK, run_guarded


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:
    return f"anomaly: warning: {message}\n"


def _cmd_demo(args: argparse.Namespace) -> int:
    from anomaly.cli.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet, debug=args.debug)
    return EXIT_OK


HANDLERS = {**PIPELINE, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    argv = bids_app_argv(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error: return, do not exit
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    if not args.debug:
        warnings.formatwarning = _one_line_warning
    return run_guarded(args.command, lambda: HANDLERS[args.command](args), debug=args.debug)


__all__ = ["HANDLERS", "main"]

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
