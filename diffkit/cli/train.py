"""`diffkit-train`: train a diffusion model with accelerate, from the shell.

    diffkit-train --output_dir out                      # one process
    accelerate launch -m diffkit.cli.train --output_dir out   # several (or `accelerate launch training/train.py`)

The same flags and run as `training/train.py`, whose `--help` this prints. (`python -m diffkit.cli.train` is the same
command.)
"""

from diffkit.training.arguments import build_parser
from diffkit.training.command_line import usage_errors_reported


def main(argv=None):
    # `--help` and argparse's own errors answer here, before torch, accelerate and diffusers load
    args = build_parser().parse_args(argv)
    from diffkit.training.train import cli

    cli(args)


def command():
    """`diffkit-train` on the command line: bad input ends it with `diffkit-train: error: ...` and exit status
    2, without a traceback (training/command_line.py); `main` raises the `ValueError` for Python callers."""
    with usage_errors_reported("diffkit-train"):
        main()


if __name__ == "__main__":
    command()
