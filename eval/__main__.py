"""``python -m eval`` — see :mod:`eval.cli`."""
import sys

from data_prep.shell import one_line_errors
from eval.cli import main

# a missing or unreadable checkpoint, a weights file of another architecture, an unwritable output,
# records that hold nothing: each message names the value and the fix
with one_line_errors(ValueError, OSError):
    sys.exit(main())
