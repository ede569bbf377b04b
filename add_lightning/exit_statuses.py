"""The console script's exit statuses and its traceback switch (README, "Exit statuses").

Only constants: :mod:`add_lightning.cli` and the commands it runs (which it imports lazily)
both read them, so they live below both.
"""

from __future__ import annotations

__all__ = ["ERROR_STATUS", "INTERRUPTED_STATUS", "TRACEBACK_VARIABLE", "USAGE_STATUS"]

#: Set to 1 to see the full traceback of an error the console script reports in one line, and
#: for a config that does not parse jsonargparse's whole message with the command's usage.
TRACEBACK_VARIABLE = "ADD_LIGHTNING_TRACEBACK"

#: Exit status of a user error: a file, config value or data that the command cannot use, a
#: ``cv`` unit that failed, a ``classify`` input that could not be read.
ERROR_STATUS = 1
#: Exit status of a command line that does not parse (unknown command or argument, a missing
#: or mistyped value), as argparse and jsonargparse exit.
USAGE_STATUS = 2
#: Exit status of a command stopped by Ctrl+C (128 + SIGINT, as a shell reports it).
INTERRUPTED_STATUS = 130
