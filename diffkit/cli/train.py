"""`diffkit-train`: train a diffusion model with accelerate, from the shell.

    diffkit-train --output_dir out                      # one process
    accelerate launch -m diffkit.cli.train --output_dir out   # several (or `accelerate launch training/train.py`)

The same flags and run as `training/train.py`, whose `--help` this prints. (`python -m diffkit.cli.train` is the same
command.)
"""

from diffkit.training.arguments import build_parser


def main(argv=None):
    # `--help` and argparse's own errors answer here, before torch, accelerate and diffusers load
    args = build_parser().parse_args(argv)
    from diffkit.training.train import cli

    cli(args)


if __name__ == "__main__":
    main()
