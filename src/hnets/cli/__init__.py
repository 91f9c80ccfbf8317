"""The ``hnets`` command line: argument parsing only.

Each subcommand module (``data``, ``experiment``, ``study``, ``tools``,
``pretrained``) adds its parsers with a ``register(subparsers)`` function and binds
a handler that calls one library function. Errors caused by the user's input
(:class:`hnets.errors.HNetsError`, missing files, bad images) are printed as one line
``hnets: error: ...`` with a non-zero exit; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import NoReturn

from ..errors import HNetsError

__all__ = ["main", "build_parser", "int_list", "CHECKPOINT_HELP"]

_SUBCOMMAND_MODULES = ("data", "experiment", "study", "tools", "pretrained")
#: The help of every ``--checkpoint``: each takes a directory or a registered name.
CHECKPOINT_HELP = (
    "a model directory (from hnets train) or a pretrained model's name (hnets models lists them)"
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = _Parser(
        prog="hnets",
        description="Harmonic Networks for PyTorch: data, training, evaluation and export.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks instead of one-line errors"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse with the house format for a bad command line: one line, exit status 2.

    argparse's own ``error`` prints the whole usage block above the message (dozens of
    lines for ``hnets train``); here the message names the problem and where the flags
    are listed. Subcommand parsers are of this class too (``add_subparsers`` uses the
    parent's class).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, _error_line(f"{message} (`{self.prog} --help` lists the options)") + "\n")


def _innermost(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> argparse.ArgumentParser:
    """The parser of the deepest subcommand that ``args`` chose (``parser`` if none)."""
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, actions[0].dest, None) if actions else None
        if chosen is None:
            return parser
        parser = actions[0].choices[chosen]


def _error_line(message: str) -> str:
    """The one line every bad input ends with (the parser's and the handlers')."""
    return f"hnets: error: {message}"


def int_list(text: str) -> list[int]:
    """``"8,20,40"`` -> ``[8, 20, 40]``: the argparse type of every comma-separated count."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        msg = f"expected integers separated by commas, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hnets`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the subcommand that was given them (its --help lists its flags)
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with _library_messages():
            result = args.handler(args)
    except KeyboardInterrupt:
        print("hnets: interrupted", file=sys.stderr)
        return 130
    except (HNetsError, OSError, ValueError) as exc:
        if args.debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(_error_line(message), file=sys.stderr)
        return 2 if isinstance(exc, HNetsError) else 1
    return int(result or 0)


@contextlib.contextmanager
def _library_messages() -> Iterator[None]:
    """Inside the block the library's INFO messages (``logging`` under ``hnets``) show
    on stderr as ``hnets: ...``, written above any progress bar (tqdm's redirect).

    A program that configured the ``hnets`` logger itself keeps its own handlers.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("hnets")
    if logger.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hnets: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        with logging_redirect_tqdm(loggers=[logger]):
            yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
