"""How a command reports bad input: `PROG: error: MESSAGE` on stderr and exit status 2, argparse's own convention,
with no traceback; a Python caller of the functions below the command still gets the `ValueError`.

Every command wraps its work in `usage_errors_reported()`: the training scripts (`run_script`), `diffkit-generate`,
`-edit`, `-evaluate`, `-push` and `-app`.
"""

import contextlib
import os
import sys

# argparse's exit status for a usage error
USAGE_ERROR_STATUS = 2


def report_usage_error(message: str, prog: str = None):
    """Print `PROG: error: MESSAGE` as argparse does, and exit with its status."""
    prog = prog or os.path.basename(sys.argv[0])
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR_STATUS)


@contextlib.contextmanager
def usage_errors_reported(prog: str = None):
    """Inside the block, a `ValueError` (bad input: every check in diffkit raises one, naming the argument, the value
    and the fix) ends the command with `report_usage_error`.

    Example:

    ```py
    >>> try:
    ...     with usage_errors_reported("diffkit-generate"):
    ...         raise ValueError("`--num_inference_steps` must be a positive integer, but is 0.")
    ... except SystemExit as exit:
    ...     print(exit.code)
    2

    ```
    """
    try:
        yield
    except ValueError as error:
        report_usage_error(str(error), prog)
