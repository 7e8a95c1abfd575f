"""`diffkit-distill`: distil a trained model into a few-step student, with accelerate, from the shell.

    diffkit-distill --model out --output_dir out-fast                          # one process
    accelerate launch -m diffkit.cli.distill --model out --output_dir out-fast   # several

The same flags and run as `training/distill.py`, whose `--help` this prints. (`python -m diffkit.cli.distill` is
the same command.)
"""

from diffkit.training.command_line import usage_errors_reported
from diffkit.training.distill_arguments import build_parser


def main(argv=None):
    # `--help` and argparse's own errors answer here, before torch, accelerate and diffusers load
    args = build_parser().parse_args(argv)
    from diffkit.training.distill import cli

    cli(args)


def command():
    """`diffkit-distill` on the command line: bad input ends it with `diffkit-distill: error: ...` and exit status 2,
    without a traceback (training/command_line.py); `main` raises the `ValueError` for Python callers."""
    with usage_errors_reported("diffkit-distill"):
        main()


if __name__ == "__main__":
    command()
