"""Pixel against latent diffusion: what a training step and a sampled image cost, as a table of ratios from one run.

    python benchmarks/bench_latent.py cost [--resolutions 32 64 128 256] [--batch_size 8] [--steps 3]
    python benchmarks/bench_latent.py seam --pixel out --latent out-latent [--num_images 100]

`cost` times, on synthetic RGB images, the default class-conditional UNet of `train.py` trained in pixels against
the same UNet trained on the latents of a VAE built as `train_vae.py` builds it (its default widths, 4 latent
channels) at down factor 4 and 8, at each resolution:

- one training step (forward, backward, AdamW on a batch), as `train.py` runs it: a latent run encoded its images
  once before training, so the VAE is not in the step (its one-time encoding is reported per image apart);
- one sampled image: 20 guided DDPM steps of the saved pipeline, and for a latent model the VAE's decoding.

Weights are random: timing does not depend on them. Each figure is the median of `--steps` repetitions after one
warm-up.

`seam` measures what pasting the known pixels back costs a latent inpainting: the bottom half of real digits is
filled by a trained pixel model and a trained latent model (their own labels, 20 DDPM steps, seed i for image i),
and the step across the mask's edge (the mean absolute difference between the last kept row and the first filled
one) is compared with the same step in the real digits, and with the step one row further into the filled part.
"""

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from diffkit.pipelines import model_kinds
from diffkit.pipelines.pipeline_class_conditional_image import ClassConditionalImagePipeline
from diffkit.pipelines.pipeline_class_conditional_inpaint import ClassConditionalInpaintPipeline
from diffkit.training.conditioning import ClassConditioning
from diffkit.training.dataset_loading import load_mnist_5k
from diffkit.training.train import build_unet
from diffkit.training.train_vae import build_vae
from diffkit.training.vae_arguments import build_parser as vae_parser

NUM_CLASSES = 10
SAMPLING_STEPS = 20
GUIDANCE_SCALE = 4.0
CHANNELS = 3


def median_seconds(function, repetitions: int) -> float:
    function()  # warm-up: allocations, kernels chosen
    times = []
    for _ in range(repetitions):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def unet_for(model_channels: int, model_size: int):
    args = SimpleNamespace(model_config_name_or_path=None, conditioning=model_kinds.CLASS_CONDITIONAL)
    conditioning = ClassConditioning(SimpleNamespace(guidance_scale=GUIDANCE_SCALE), NUM_CLASSES, None)
    conditioning.vae = None
    return build_unet(args, conditioning, model_channels, model_size), conditioning


def vae_for(down_factor: int, resolution: int):
    args = vae_parser().parse_args(["--down_factor", str(down_factor), "--output_dir", "unused"])
    return build_vae(args, CHANNELS, resolution).eval()


def cost_row(resolution: int, down_factor, batch_size: int, repetitions: int) -> dict:
    """Seconds per training step and per sampled image at `resolution`, in pixels (`down_factor` None) or latents."""
    torch.manual_seed(0)
    vae = None if down_factor is None else vae_for(down_factor, resolution)
    channels = CHANNELS if vae is None else vae.config.latent_channels
    size = resolution if vae is None else resolution // down_factor
    unet, conditioning = unet_for(channels, size)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    clean = torch.randn(batch_size, channels, size, size)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,))
    states = torch.nn.functional.one_hot(labels, NUM_CLASSES + 1).float()[:, None, :]

    def training_step():
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, 1000, (batch_size,))
        loss = F.mse_loss(unet(scheduler.add_noise(clean, noise, timesteps), timesteps, states).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    row = {"resolution": resolution, "space": "pixels" if vae is None else f"latents f={down_factor}"}
    row["train_step_s"] = median_seconds(training_step, repetitions)
    unet.eval()
    conditioning.vae = vae
    pipe = conditioning.build_pipeline(unet, DDPMScheduler.from_config(scheduler.config, clip_sample=vae is None))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        row["sample_s"] = median_seconds(
            lambda: pipe(class_labels=[0], num_inference_steps=SAMPLING_STEPS, output_type="pt"), repetitions
        )
        if vae is not None:
            images = torch.randn(batch_size, CHANNELS, resolution, resolution)
            row["encode_per_image_s"] = median_seconds(lambda: vae.encode(images), repetitions) / batch_size
    return row


def cost(args):
    torch.set_num_threads(args.threads or torch.get_num_threads())
    rows = []
    for resolution in args.resolutions:
        for down_factor in (None, 4, 8):
            rows.append(cost_row(resolution, down_factor, args.batch_size, args.steps))
            print(f"  measured {rows[-1]}", flush=True)
    print(
        f"\nSeconds per training step (batch {args.batch_size}, RGB, default class-conditional UNet) and per sampled "
        f"image ({SAMPLING_STEPS} guided DDPM steps, plus the VAE's decoding), {torch.get_num_threads()} CPU "
        f"thread(s); the ratios are pixel / latent.\n"
    )
    print(
        "| resolution | space | train step (s) | pixel/latent | sampled image (s) | pixel/latent "
        "| encode once (s/image) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        pixel = next(r for r in rows if r["resolution"] == row["resolution"] and r["space"] == "pixels")
        train_ratio = pixel["train_step_s"] / row["train_step_s"]
        sample_ratio = pixel["sample_s"] / row["sample_s"]
        encode = f"{row['encode_per_image_s']:.4f}" if "encode_per_image_s" in row else "-"
        print(
            f"| {row['resolution']} | {row['space']} | {row['train_step_s']:.3f} | {train_ratio:.1f}x | "
            f"{row['sample_s']:.3f} | {sample_ratio:.1f}x | {encode} |"
        )


def edge_steps(images: np.ndarray, edge: int) -> tuple:
    """Mean absolute differences (in [0, 1] units) between rows `edge - 1` and `edge` (across the mask's edge), and
    between rows `edge` and `edge + 1` (inside the filled part), over `images` (N, H, W) in [0, 1]."""
    across = np.abs(images[:, edge] - images[:, edge - 1]).mean()
    inside = np.abs(images[:, edge + 1] - images[:, edge]).mean()
    return float(across), float(inside)


def seam(args):
    data = load_mnist_5k().select(range(args.num_images))
    rows = []
    real_figures = {}
    for name, folder in (("pixels", args.pixel), ("latents", args.latent)):
        pipe = ClassConditionalInpaintPipeline.from_pipe(ClassConditionalImagePipeline.from_pretrained(folder))
        pipe.set_progress_bar_config(disable=True)
        side = pipe.image_size()[0]
        edge = side // 2
        mask = np.zeros((side, side), dtype=np.uint8)
        mask[edge:] = 255
        images, reals = [], []
        for index, example in enumerate(data):
            real = example["image"].resize((side, side))
            reals.append(np.asarray(real, dtype=np.float32) / 255)
            output = pipe(
                image=real,
                mask_image=mask,
                class_labels=[int(example["label"])],
                num_inference_steps=SAMPLING_STEPS,
                generator=torch.Generator().manual_seed(index),
                output_type="np",
            ).images
            images.append(output[0, :, :, 0])
        real_figures[name] = edge_steps(np.stack(reals), edge)
        rows.append((name, side, *edge_steps(np.stack(images), edge)))
        print(f"  measured {rows[-1]}", flush=True)
    print(
        f"\nInpainting the bottom half of {args.num_images} MNIST digits (their own labels, {SAMPLING_STEPS} DDPM "
        "steps): the mean absolute step between two rows, in [0, 1] units, across the mask's edge and one row into "
        "the filled part, against the same rows of the real digits.\n"
    )
    print("| model | side | across the edge | real digits there | one row in | real digits there |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, side, across, inside in rows:
        real_across, real_inside = real_figures[name]
        print(f"| {name} | {side} px | {across:.4f} | {real_across:.4f} | {inside:.4f} | {real_inside:.4f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cost_parser = commands.add_parser("cost", help="Seconds per training step and per sampled image.")
    cost_parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256], help="Image sides.")
    cost_parser.add_argument("--batch_size", type=int, default=8, help="Images per training step.")
    cost_parser.add_argument("--steps", type=int, default=3, help="Timed repetitions (after one warm-up).")
    cost_parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
    seam_parser = commands.add_parser("seam", help="The seam of latent inpainting, against a pixel model's.")
    seam_parser.add_argument("--pixel", required=True, help="A class-conditional pixel pipeline folder (train.py).")
    seam_parser.add_argument("--latent", required=True, help="A class-conditional latent one (train.py --vae).")
    seam_parser.add_argument("--num_images", type=int, default=100, help="Digits to inpaint.")
    args = parser.parse_args()
    if args.command == "cost":
        cost(args)
    else:
        seam(args)


if __name__ == "__main__":
    main()
