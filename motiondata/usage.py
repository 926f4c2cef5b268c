"""Command-line usage errors: one line naming the problem and the fix, never a usage dump or a traceback.

``OneLineArgumentParser`` raises ``UsageError`` where argparse would print its usage block and exit;
``motiondata.cli`` prints it as one line and exits 2 (``--json``: a JSON object on stdout).
"""

from __future__ import annotations

import argparse

from motiondata.errors import MotionDataError

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(MotionDataError, ValueError):
    """Bad arguments or paths on the command line (exit code 2)."""

    exit_code = EXIT_USAGE


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ``UsageError`` one-liners (subparsers inherit the class)."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}; see `{self.prog} -h`")


def one_line(text: object) -> str:
    """Collapse a message to one line (exception texts from libraries may span several)."""
    return " ".join(str(text).split())
