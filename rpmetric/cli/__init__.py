"""The ``rpmetric`` command line. Each command lives in its own module with a ``register``
function that adds its sub-parser, so commands stay independent."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import sys
import warnings
from pathlib import Path
from typing import List, Optional

from .._version import __version__
from ..errors import MissingDependencyError, WorkerDiedError
from .common import rerun_command

# Module names under rpmetric.cli, in the order `rpmetric --help` lists them.
COMMAND_MODULES = ["models", "distance", "download", "evaluate", "embed", "train", "plot", "invert", "explain"]

# Python arguments whose CLI option is not their name with dashes (see cli_words).
CLI_OPTIONS = {"skipped": "--skip-bad", "num_workers": "--workers"}


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose commands take options anywhere among their positionals
    (``classify STORE --labels L.csv Q1 Q2``), as argparse users expect.

    A command's parser (one without sub-commands) parses intermixed, and reports arguments it does
    not know itself, so the usage shown is that command's, not the top-level one.
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        # parse_known_intermixed_args calls this method again: the inner calls parse plainly.
        if self._subparsers is not None or self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            namespace, extras = self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rpmetric",
        description="Robust perceptual metrics from adversarially robust vision encoders.",
    )
    parser.add_argument("--version", action="version", version=f"rpmetric {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")  # sub-parsers are Parsers too
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def cli_words(message: str) -> str:
    """A library message with its Python arguments in backticks (```resume=True```) spelled as CLI
    options (``--resume``), so that each audience reads its own words.

    Example:
        >>> cli_words("pass `resume=True` to continue, or use `device='cpu'`")
        'pass --resume to continue, or use --device cpu'
    """
    def option(match) -> str:
        name, value = match[1], match[2]
        flag = CLI_OPTIONS.get(name, "--" + name.replace("_", "-"))
        if value in ("True", "[]"):  # a flag, or skipped=[] for --skip-bad
            return flag
        return f"{flag} " + value.strip("'\"")

    return re.sub(r"`([a-z_]+)=([^`]*)`", option, message)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``rpmetric`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    with warnings.catch_warnings():
        warnings.showwarning = _notice(args.command)
        return _run(args)


def _run(args) -> int:
    try:
        if getattr(args, "device", None) is not None:  # before any input is read or model loaded
            from ..metric import check_device

            check_device(args.device)
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, KeyError, MissingDependencyError) as err:
        # Expected user-facing errors: one clear line, no traceback (once, not once per torchrun process).
        _say(args, f"error: {cli_words(str(err))}")
        return 2
    except WorkerDiedError as err:  # not the user's input: exit 1, but one line, as it says how to resume
        _say(args, f"error: {cli_words(str(err))}")
        return 1
    except OSError as err:
        if err.errno not in OUTPUT_FAULTS:
            raise
        _say(args, f"error: {_os_error(err)}{_saved(args) or '.'}")
        return 2
    except KeyboardInterrupt:
        _say(args, _interrupted(args))
        return 130


# Faults a user causes on a file or folder, and the fix each message ends with.
OUTPUT_FAULTS = {
    errno.EACCES: "check its permissions, or choose another location",
    errno.EPERM: "check its permissions, or choose another location",
    errno.EROFS: "the filesystem is read-only; choose another location",
    errno.ENOSPC: "the disk is full; free some space, or choose another location",
    errno.EDQUOT: "the disk quota is used up; free some space, or choose another location",
    errno.EISDIR: "it is a folder; give a file name",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another location",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def _os_error(err: OSError) -> str:
    """One line for an OSError the user can fix: the path, what went wrong, and the fix."""
    path = err.filename2 if err.filename2 is not None else err.filename
    where = f"{path}: " if path is not None else ""
    return f"{where}{err.strerror or err}; {OUTPUT_FAULTS[err.errno]}"


def _say(args, text: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"rpmetric {args.command}: {text}", file=sys.stderr)


def _notice(command: str):
    """A ``warnings.showwarning`` that prints one line, without Python's source line: the library's
    warnings are notices for the user of the command."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"rpmetric {command}: warning: {cli_words(str(message))}", file=sys.stderr)

    return show


def _interrupted(args) -> str:
    """What Ctrl-C leaves behind: where the work done is saved, and the command that continues it.

    A command that saves progress sets ``args.progress`` (its run log, store or head folder) and
    declares how to continue with ``set_defaults(rerun=(options to add, options to drop))``.
    """
    return "interrupted" + _saved(args)


def _saved(args) -> str:
    """Where the work done is saved and the command that continues it (see :func:`_interrupted`), or ''."""
    saved = getattr(args, "progress", None)
    if saved is None or not Path(saved).exists():
        return ""
    add, drop = getattr(args, "rerun", ((), ()))
    return f"; the work done is saved in {saved}; run `{rerun_command(args.argv, add, drop)}` to continue."
