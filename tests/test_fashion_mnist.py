"""`--dataset fashion-mnist`: Fashion-MNIST from the Debian package dataset-fashion-mnist, train and test apart."""

import json
import os

import numpy as np
import pytest

from diffkit.training import dataset_loading
from diffkit.training.dataset_loading import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABEL_NAMES,
    load_embedded_dataset,
    load_fashion_mnist,
)
from diffkit.training.train import TRAINING_CONFIG_NAME, main, parse_args

# CI installs the package (.ci/run); elsewhere these tests say how to get it.
needs_fashion_mnist = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
    reason="Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` (CI installs it) runs these",
)


@needs_fashion_mnist
def test_both_splits_load_with_their_sizes_and_class_names():
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.features["label"].names == FASHION_MNIST_LABEL_NAMES
    for split in (train, test):
        counts = np.bincount(split["label"], minlength=10)
        assert (counts == len(split) // 10).all()  # the published splits are balanced
    image = np.asarray(test[0]["image"])
    assert image.shape == (28, 28) and image.dtype == np.uint8
    # real garments: dark background, bright object (the first test image is an ankle boot)
    assert test[0]["label"] == FASHION_MNIST_LABEL_NAMES.index("Ankle boot")
    assert image[0].max() == 0 and image.max() > 200
    # the test images are not training images
    assert not np.array_equal(np.asarray(train[0]["image"]), image)


def test_missing_package_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset_loading, "FASHION_MNIST_DIR", str(tmp_path / "absent"))
    with pytest.raises(
        ValueError, match="Debian package dataset-fashion-mnist.*apt-get install -y dataset-fashion-mnist"
    ):
        parse_args(["--dataset", "fashion-mnist", "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="has no split 'test'"):
        load_embedded_dataset("mnist-5k", "test")


@needs_fashion_mnist
@pytest.mark.parametrize("conditioning", ["class", "text"])
def test_training_on_fashion_mnist_names_its_classes(tmp_path, tiny_clip_folder, conditioning):
    output_dir = tmp_path / "out"
    args = [
        "--dataset", "fashion-mnist", "--conditioning", conditioning, "--max_train_samples", "40",
        "--max_train_steps", "1", "--train_batch_size", "8", "--resolution", "16", "--num_inference_steps", "1",
        "--num_samples_per_class", "1", "--output_dir", str(output_dir),
    ]  # fmt: skip
    if conditioning == "text":
        args += ["--precompute_text_embeddings", "--text_encoder", tiny_clip_folder]
    main(parse_args(args))
    config = json.loads((output_dir / TRAINING_CONFIG_NAME).read_text())
    assert config["data"]["source"].startswith("fashion-mnist (the 60,000 training images")
    assert list(config["data"]["id2label"].values()) == FASHION_MNIST_LABEL_NAMES
    if conditioning == "text":
        assert config["data"]["sample_prompts"][:2] == ["a t-shirt/top", "a trouser"]
    assert "zalando-datasets/fashion_mnist" in (output_dir / "README.md").read_text()
