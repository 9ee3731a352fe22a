"""User-facing errors: one line on stderr, exit code 2, no traceback.

Raise `UserError` for anything the user can fix (a config key, a data row, a missing file). `exit_on_user_error`
wraps a recipe's main() so those become a clean message; real bugs still raise with their traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import time


RANK_WAIT_S = 5


class UserError(Exception):
    """A problem with the user's input. The message names the file, row or key and what is wrong."""


def exit_on_user_error(main):
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            message = " ".join(str(err).split())  # exactly one line
            rank = int(os.environ.get("RANK", "0"))
            if rank != 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # Every rank usually meets the same error; rank 0 prints it and the launcher stops the others in the
                # meantime. A rank that is still alive after the wait has an error of its own.
                time.sleep(RANK_WAIT_S)
                message = f"rank {rank}: {message}"
            print(f"error: {message}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper
