"""`diffkit-train-vae`: train the VAE of a latent diffusion run, with accelerate, from the shell.

    diffkit-train-vae --output_dir vae-out                          # one process
    accelerate launch -m diffkit.cli.train_vae --output_dir vae-out   # several

The same flags and run as `training/train_vae.py`, whose `--help` this prints. (`python -m diffkit.cli.train_vae`
is the same command.)
"""

from diffkit.training.command_line import usage_errors_reported
from diffkit.training.vae_arguments import build_parser


def main(argv=None):
    # `--help` and argparse's own errors answer here, before torch, accelerate and diffusers load
    args = build_parser().parse_args(argv)
    from diffkit.training.train_vae import cli

    cli(args)


def command():
    """`diffkit-train-vae` on the command line: bad input ends it with `diffkit-train-vae: error: ...` and exit
    status 2, without a traceback (training/command_line.py); `main` raises the `ValueError` for Python callers."""
    with usage_errors_reported("diffkit-train-vae"):
        main()


if __name__ == "__main__":
    command()
