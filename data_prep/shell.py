"""Errors a user can act on, shown from the shell as one ``error: ...`` line (exit status 2) instead of a
traceback; in-process callers (tests, notebooks) get the exception itself. ``CLIP_BIAS_LAB_TRACEBACK=1``
shows the traceback behind the line. Used by every command's ``__main__``."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

TRACEBACK_ENV = "CLIP_BIAS_LAB_TRACEBACK"  #: set to 1 to see the traceback behind a one-line error
USAGE_ERROR = 2  #: exit status of a refused command, as argparse's


def traceback_wanted() -> bool:
    """True when :data:`TRACEBACK_ENV` asks for tracebacks instead of one-line errors."""
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


@contextlib.contextmanager
def one_line_errors(*types: type[BaseException]) -> Iterator[None]:
    """Inside, an exception of ``types`` ends the process with ``error: <message>`` on stderr (exit 2)."""
    try:
        yield
    except types as err:
        if traceback_wanted():
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(USAGE_ERROR) from None
