"""Latent diffusion for `training/train.py --vae`: the frozen VAE, and the training images' latents, encoded once.

Each training image is encoded once, before training, into its latent distribution (the mean and log-variance of
the VAE's diagonal Gaussian posterior), and with `--random_flip` its mirror image too. Every training step then
samples a latent from that distribution with the run's noise generator, so the VAE never runs in the training step,
the model still sees the posterior's spread (as Stable Diffusion's training does), and a resumed run draws exactly
the latents that the uninterrupted run would have.
"""

import math
import os
import time
from typing import Tuple

import torch
from accelerate.logging import get_logger
from diffusers import AutoencoderKL

from diffkit.pipelines import model_kinds
from diffkit.training.dataset_loading import INDEX_COLUMN, TrainTransform

logger = get_logger(__name__, log_level="INFO")

# Images per VAE forward pass when the training data is encoded.
ENCODE_BATCH_SIZE = 64
# The conditionings that train on latents; a super-resolution stage reads its low-resolution input in pixels.
LATENT_CONDITIONINGS = (model_kinds.UNCONDITIONAL, model_kinds.CLASS_CONDITIONAL, model_kinds.TEXT_CONDITIONAL)


def vae_config(args) -> dict:
    """The config of `--vae` (read without loading weights), refused unless it is an AutoencoderKL's."""
    name = args.vae
    if os.path.isdir(name):
        subfolder_path = os.path.join(name, args.vae_subfolder or "")
        if not os.path.isfile(os.path.join(subfolder_path, "config.json")):
            hint = (
                " It is a pipeline folder: add --vae_subfolder vae."
                if args.vae_subfolder is None and os.path.isfile(os.path.join(name, "vae", "config.json"))
                else ""
            )
            raise ValueError(
                f"`--vae` {name!r}{f' (--vae_subfolder {args.vae_subfolder!r})' if args.vae_subfolder else ''} holds "
                f"no config.json, so it is not an AutoencoderKL folder.{hint}"
            )
    config = AutoencoderKL.load_config(name, subfolder=args.vae_subfolder, cache_dir=args.cache_dir)
    class_name = config.get("_class_name")
    if class_name != AutoencoderKL.__name__:
        raise ValueError(
            f"`--vae` {name!r} holds a {class_name} config, not an AutoencoderKL: pass an output folder of "
            "training/train_vae.py, an AutoencoderKL folder or repo, or a Stable Diffusion one with --vae_subfolder "
            "vae."
        )
    return dict(config)


def down_factor_of(config: dict) -> int:
    """How many times an AutoencoderKL of `config` shrinks each side of the images."""
    return 2 ** (len(config["block_out_channels"]) - 1)


def check_vae_args(args, unet_config: dict, unet_down_factor: int):
    """The `--vae` flags: a conditioning that trains on latents, an AutoencoderKL, latents that a given UNet config
    takes and a --resolution that the VAE and the UNet both divide."""
    if args.vae is None:
        if args.vae_subfolder is not None:
            raise ValueError("`--vae_subfolder` only applies with --vae: add --vae, or drop --vae_subfolder.")
        return
    if args.conditioning not in LATENT_CONDITIONINGS:
        raise ValueError(
            f"`--vae` trains in a VAE's latent space, which --conditioning {args.conditioning!r} does not support "
            "(its model reads the low-resolution image in pixels): use --conditioning "
            f"{' | '.join(LATENT_CONDITIONINGS)}, or drop --vae."
        )
    config = vae_config(args)
    latent_channels = config["latent_channels"]
    given_channels = unet_config.get("in_channels") if args.model_config_name_or_path is not None else None
    if given_channels is not None and given_channels != latent_channels:
        raise ValueError(
            f"`--model_config_name_or_path` {args.model_config_name_or_path!r} is a UNet of {given_channels} input "
            f"channels, but the latents of `--vae` {args.vae!r} have {latent_channels}: pass a UNet config for "
            f"{latent_channels} channels (or none: the default UNet fits the latents), or a VAE with "
            f"{given_channels} latent channels."
        )
    if args.resolution is not None:
        check_latent_resolution(args.resolution, down_factor_of(config), unet_down_factor, "--resolution")


def check_latent_resolution(resolution: int, vae_down_factor: int, unet_down_factor: int, what: str):
    """Refuse an image side that the VAE's down factor does not divide, or whose latents the UNet cannot halve."""
    multiple = vae_down_factor * unet_down_factor
    if resolution % multiple:
        fitting = multiple * math.ceil(resolution / multiple)
        raise ValueError(
            f"`{what}` {resolution} does not fit the latent model: the VAE shrinks images {vae_down_factor} times and "
            f"the UNet halves its input {int(math.log2(unet_down_factor))} times, so the side must be a multiple of "
            f"{multiple}. Pass --resolution {fitting} (images are resized), or a VAE or UNet config that fits."
        )


def fitting_resolution(image_side: int, vae_down_factor: int, unet_down_factor: int) -> int:
    """The smallest side from `image_side` up whose latents the UNet can halve evenly."""
    multiple = vae_down_factor * unet_down_factor
    return multiple * math.ceil(image_side / multiple)


def load_vae(args, num_channels: int, device) -> AutoencoderKL:
    """The frozen `--vae` in float32 on `device`, refused when it does not encode images of the data's channels."""
    vae = AutoencoderKL.from_pretrained(args.vae, subfolder=args.vae_subfolder, cache_dir=args.cache_dir)
    if vae.config.in_channels != num_channels:
        raise ValueError(
            f"`--vae` {args.vae!r} encodes {vae.config.in_channels}-channel images, but the training images have "
            f"{num_channels} channel(s): a VAE and data of different channels do not mix. Train a VAE on this data "
            "(training/train_vae.py), or train on images of its channels."
        )
    # The VAE stays in float32 whatever --mixed_precision says: it runs once per image, and Stable Diffusion's VAE
    # overflows in float16 (diffusers' SDXL example keeps it in float32 for the same reason).
    vae.requires_grad_(False)
    return vae.to(device).eval()


class LatentDistributions:
    """The training images' latent distributions: `mean` and `logvar` of shape (images, views, channels, h, w), where
    view 1 is the mirror image (with `--random_flip`), and the scaling of the VAE's config."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor, indices: torch.Tensor, scaling_factor, shift_factor):
        self.mean, self.logvar = mean, logvar
        self.scaling_factor, self.shift_factor = scaling_factor, shift_factor or 0.0
        # The row of each example index (the data's INDEX_COLUMN), since a batch names its examples by index.
        self.row_of_index = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long)
        self.row_of_index[indices] = torch.arange(len(indices))

    def sample(self, indices: torch.Tensor, flipped: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Scaled latents of a batch, drawn from each image's posterior (its mirror image's where `flipped`) with
        `generator`, on the generator's device: `(z - shift_factor) * scaling_factor`, as Stable Diffusion scales
        them."""
        rows = self.row_of_index[indices.cpu()]
        views = flipped.cpu().long() if self.mean.shape[1] > 1 else torch.zeros_like(rows)
        device = generator.device
        mean = self.mean[rows, views].to(device)
        std = torch.exp(0.5 * self.logvar[rows, views]).to(device)
        noise = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype)
        return (mean + std * noise - self.shift_factor) * self.scaling_factor


@torch.no_grad()
def encode_training_images(
    accelerator, vae: AutoencoderKL, decoded_dataset, resolution: int, args
) -> Tuple[LatentDistributions, float]:
    """Encode every training image (and, with `--random_flip`, its mirror image) once; every process encodes its
    share and all of them get the whole set. Returns the distributions and the seconds it took.

    The images are cropped as the pixel path's epoch 0 crops them (in the centre with `--center_crop`, else at a
    position drawn per image from `--seed`): a latent run keeps that crop for every epoch, while the flip stays random
    per epoch.
    """
    start = time.time()
    transform = TrainTransform(resolution, args.center_crop, random_flip=False, seed=args.seed)
    dataset = decoded_dataset.with_transform(transform)
    num_images = len(dataset)
    share = math.ceil(num_images / accelerator.num_processes)
    first = min(accelerator.process_index * share, num_images)
    rows = list(range(first, min(first + share, num_images)))
    views = 2 if args.random_flip else 1
    config = vae.config
    latent_side = resolution // down_factor_of(config)
    shape = (views, config.latent_channels, latent_side, latent_side)
    means, logvars, indices = [], [], []
    for batch_rows in [rows[i : i + ENCODE_BATCH_SIZE] for i in range(0, len(rows), ENCODE_BATCH_SIZE)]:
        batch = dataset[batch_rows]
        pixels = batch["pixel_values"].to(accelerator.device)
        if views == 2:
            pixels = torch.stack([pixels, pixels.flip(-1)], dim=1).flatten(0, 1)
        posterior = vae.encode(pixels).latent_dist
        means.append(posterior.mean.float().reshape(-1, *shape))
        logvars.append(posterior.logvar.float().reshape(-1, *shape))
        indices.append(batch[INDEX_COLUMN].to(accelerator.device))
    # Every process pads its share to `share` rows so that the gathered tensors have one shape; the padding (past
    # the last image) is dropped after the gather.
    if not rows:
        means, logvars, indices = [torch.zeros((0, *shape))], [torch.zeros((0, *shape))], [torch.zeros(0).long()]
    gathered = []
    for parts in (means, logvars, indices):
        tensor = torch.cat([part.to(accelerator.device) for part in parts])
        padding = tensor.new_zeros((share - len(tensor), *tensor.shape[1:]))
        gathered.append(accelerator.gather(torch.cat([tensor, padding]))[:num_images].cpu())
    mean, logvar, index = gathered
    shift_factor = getattr(config, "shift_factor", None)
    return LatentDistributions(mean, logvar, index, config.scaling_factor, shift_factor), time.time() - start


def latent_data_config(args, config: dict, resolution: int, encode_seconds: float) -> dict:
    """The `training_config.json` entry of a latent run."""
    down_factor = down_factor_of(config)
    return {
        "vae": args.vae,
        "vae_subfolder": args.vae_subfolder,
        "down_factor": down_factor,
        "latent_channels": config["latent_channels"],
        "latent_size": resolution // down_factor,
        "scaling_factor": config["scaling_factor"],
        "shift_factor": config.get("shift_factor"),
        "encode_seconds": round(encode_seconds, 1),
    }
