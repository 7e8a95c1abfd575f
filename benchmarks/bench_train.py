"""Training throughput with and without diffkit's data path, as a table of ratios from one run.

    python benchmarks/bench_train.py [--steps 8] [--num_workers 0]

Two configurations: the default job (the embedded 28x28 grey digits, default class-conditional UNet, batch 64) and
a 32x32 RGB one (2,000 real photo crops of 64x48 from scikit-learn's sample images, random crop and flip). For each,
"baseline" decodes, resizes and crops every image with PIL in every epoch, as diffusers' training examples do;
"diffkit" uses `decode_once` (once per run, timed separately) and the batch `TrainTransform`. Reported: images/second
of the data loader alone, and of whole training steps (forward, backward, AdamW) fed by it.
"""

import argparse
import time
from types import SimpleNamespace

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffkit.pipelines import model_kinds
from diffkit.training.conditioning import ClassConditioning
from diffkit.training.dataset_loading import (
    INDEX_COLUMN,
    TrainTransform,
    crop_square,
    decode_once,
    load_mnist_5k,
    resize_shorter_side,
)
from diffkit.training.train import build_unet

BATCH_SIZE = 64
NUM_PHOTO_CROPS = 2000
PHOTO_CROP = (64, 48)


class PerImagePilTransform:
    """The baseline: every image decoded, converted, resized, cropped and flipped with PIL, every epoch."""

    def __init__(self, image_mode, resolution, seed=0):
        self.image_mode, self.resolution, self.seed = image_mode, resolution, seed

    def __call__(self, examples):
        tensors = []
        for image, index in zip(examples["image"], examples[INDEX_COLUMN]):
            rng = np.random.default_rng((self.seed, 0, index))
            image = resize_shorter_side(image.convert(self.image_mode), self.resolution)
            array = np.asarray(image)
            array = crop_square(array[:, :, None] if array.ndim == 2 else array, self.resolution, tuple(rng.random(2)))
            if rng.random() < 0.5:
                array = array[:, ::-1]
            tensors.append(torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1) / 127.5 - 1.0)
        return {"pixel_values": torch.stack(tensors), "labels": torch.tensor(examples["label"])}


def photo_crops():
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(NUM_PHOTO_CROPS):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - PHOTO_CROP[1])
        left = rng.integers(0, photo.shape[1] - PHOTO_CROP[0])
        images.append(Image.fromarray(photo[top : top + PHOTO_CROP[1], left : left + PHOTO_CROP[0]]))
        labels.append(i % len(photos))
    return datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        features=datasets.Features(
            {"image": datasets.Image(), "label": datasets.ClassLabel(names=["china", "flower"])}
        ),
    )


def loader(dataset, transform, num_workers):
    dataset = dataset.with_transform(transform)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=num_workers)


def data_rate(data_loader, steps):
    iterator = iter(data_loader)
    next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * BATCH_SIZE / (time.perf_counter() - start)


def train_rate(data_loader, unet, num_classes, steps):
    from diffusers import DDPMScheduler

    from diffkit.pipelines.pipeline_class_conditional_image import one_hot_label_states

    scheduler = DDPMScheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    iterator = iter(data_loader)
    for step in range(steps + 1):
        if step == 1:  # the first step warms up
            start = time.perf_counter()
        batch = next(iterator)
        images = batch["pixel_values"]
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (len(images),))
        states = one_hot_label_states(batch["labels"], num_classes, images.dtype)
        loss = F.mse_loss(unet(scheduler.add_noise(images, noise, t), t, encoder_hidden_states=states).sample, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return steps * BATCH_SIZE / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="Timed batches per measurement.")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader workers for both data paths.")
    args = parser.parse_args()
    datasets.disable_progress_bars()

    rows = []
    for name, dataset, image_mode, resolution in [
        ("default job, 28x28 grey", load_mnist_5k(), "L", 28),
        ("32x32 RGB photo crops", photo_crops(), "RGB", 32),
    ]:
        dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
        start = time.perf_counter()
        decoded = decode_once(dataset, image_mode, resolution)
        decode_seconds = time.perf_counter() - start
        baseline = loader(dataset, PerImagePilTransform(image_mode, resolution), args.num_workers)
        ours = loader(decoded, TrainTransform(resolution, False, True, 0), args.num_workers)
        num_classes = dataset.features["label"].num_classes
        torch.manual_seed(0)
        model_args = SimpleNamespace(conditioning=model_kinds.CLASS_CONDITIONAL, model_config_name_or_path=None)
        conditioning = ClassConditioning(model_args, num_classes, id2label=None)
        unet = build_unet(model_args, conditioning, 1 if image_mode == "L" else 3, resolution)
        rates = {
            "data baseline": data_rate(baseline, args.steps),
            "data diffkit": data_rate(ours, args.steps),
            "train baseline": train_rate(baseline, unet, num_classes, args.steps),
            "train diffkit": train_rate(ours, unet, num_classes, args.steps),
        }
        rows.append((name, len(dataset), decode_seconds, rates))

    print(
        f"\nimages/second, batch {BATCH_SIZE}, {args.steps} timed batches, {args.num_workers} DataLoader workers, "
        f"{torch.get_num_threads()} torch threads, the default class-conditional UNet"
    )
    header = f"{'configuration':<26} | {'decode once':>11} | {'data: baseline':>14} | {'diffkit':>9} | {'ratio':>6} |"
    header += f" {'train: baseline':>15} | {'diffkit':>8} | {'ratio':>6}"
    print(header)
    for name, size, decode_seconds, r in rows:
        print(
            f"{name:<26} | {decode_seconds:>9.1f} s | {r['data baseline']:>14.0f} | {r['data diffkit']:>9.0f} | "
            f"{r['data diffkit'] / r['data baseline']:>5.1f}x | {r['train baseline']:>15.0f} | "
            f"{r['train diffkit']:>8.0f} | {r['train diffkit'] / r['train baseline']:>5.2f}x"
        )


if __name__ == "__main__":
    main()
