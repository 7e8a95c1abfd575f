"""Sample-quality statistics on feature vectors: Fréchet distance, KID, and k-NN precision and recall.

The functions take features (one row per image) from any extractor; a result is only meaningful together with the
name of that feature space and the number of images, so callers report e.g. "FID-MobileNetV2 (2,000 samples)".
Everything is computed in float64 with numpy, deterministically (KID's subsets come from a seeded generator).
"""

from typing import NamedTuple, Tuple

import numpy as np

# KID as in Bińkowski et al. (2018) and torch-fidelity: polynomial kernel (x.y / d + 1)^3, 100 subsets of 1,000.
KID_DEGREE = 3
KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000
# Precision and recall as in Kynkäänniemi et al. (2019): a point is covered when it lies within the distance to
# the k-th nearest neighbour of some point of the other set; k = 3 is the paper's choice.
PRECISION_RECALL_K = 3
# The metrics diffkit reports, by name; the name says which network's features they are computed in.
MOBILENET_METRICS = ["FID-MobileNetV2", "KID-MobileNetV2", "precision-MobileNetV2", "recall-MobileNetV2"]
CLASSIFIER_METRICS = ["class-accuracy", "FD-classifier"]
INCEPTION_METRICS = ["FID-InceptionV3", "KID-InceptionV3", "IS-InceptionV3"]
ALL_METRICS = MOBILENET_METRICS + CLASSIFIER_METRICS + INCEPTION_METRICS
HIGHER_IS_BETTER = {"class-accuracy", "precision-MobileNetV2", "recall-MobileNetV2", "IS-InceptionV3"}


class FeatureStatistics(NamedTuple):
    mean: np.ndarray
    covariance: np.ndarray
    num_samples: int


def feature_statistics(features: np.ndarray) -> FeatureStatistics:
    """Mean and (unbiased) covariance of `features`, an array of shape (num_images, feature_dim)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"`features` must have shape (num_images >= 2, dim), but has shape {features.shape}.")
    return FeatureStatistics(features.mean(axis=0), np.cov(features, rowvar=False), len(features))


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    r"""
    Fréchet distance between the Gaussians fitted to two feature sets:
    $\|\mu_1 - \mu_2\|^2 + \mathrm{tr}(\Sigma_1 + \Sigma_2 - 2 (\Sigma_1 \Sigma_2)^{1/2})$.

    The trace of the matrix square root is taken from the eigenvalues of the symmetric matrix
    $\Sigma_1^{1/2} \Sigma_2 \Sigma_1^{1/2}$, which has the same spectrum, so no complex parts appear.

    Example:

    ```py
    >>> import numpy as np
    >>> same = FeatureStatistics(np.zeros(2), np.eye(2), 100)
    >>> shifted = FeatureStatistics(np.array([3.0, 4.0]), np.eye(2), 100)
    >>> round(frechet_distance(same, shifted), 6)
    25.0

    ```
    """
    eigenvalues, eigenvectors = np.linalg.eigh(first.covariance)
    sqrt_first = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T
    middle = sqrt_first @ second.covariance @ sqrt_first
    trace_sqrt_product = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    mean_term = float(np.sum((first.mean - second.mean) ** 2))
    return mean_term + float(np.trace(first.covariance) + np.trace(second.covariance) - 2 * trace_sqrt_product)


def kernel_inception_distance(
    first: np.ndarray,
    second: np.ndarray,
    num_subsets: int = KID_NUM_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> Tuple[float, float]:
    """Unbiased MMD² with a cubic polynomial kernel between two feature sets: (mean, std) over random subsets.

    Subsets hold `min(subset_size, len(first), len(second))` rows; when that is all of both sets, one subset is
    computed and the std is 0. The estimator is unbiased: for two samples of one distribution its expectation is 0,
    so small negative values occur.
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    size = min(subset_size, len(first), len(second))
    if size < 2:
        raise ValueError(f"KID needs at least 2 feature vectors per set, but got {len(first)} and {len(second)}.")
    dim = first.shape[1]
    if size == len(first) == len(second):
        num_subsets = 1  # every "subset" would be the whole of both sets: one computation gives the value
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_subsets):
        x = first[rng.choice(len(first), size, replace=False)]
        y = second[rng.choice(len(second), size, replace=False)]
        k_xx = (x @ x.T / dim + 1) ** KID_DEGREE
        k_yy = (y @ y.T / dim + 1) ** KID_DEGREE
        k_xy = (x @ y.T / dim + 1) ** KID_DEGREE
        off_diagonal = size * (size - 1)
        values.append(
            (k_xx.sum() - np.trace(k_xx)) / off_diagonal
            + (k_yy.sum() - np.trace(k_yy)) / off_diagonal
            - 2 * k_xy.mean()
        )
    return float(np.mean(values)), float(np.std(values))


def _kth_neighbour_radii(features: np.ndarray, k: int) -> np.ndarray:
    distances = np.sqrt(np.maximum(_squared_distances(features, features), 0))
    # column 0 of each sorted row is the point itself (distance 0)
    return np.sort(distances, axis=1)[:, k]


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = PRECISION_RECALL_K) -> Tuple[float, float]:
    """k-NN precision (share of generated samples inside the real manifold) and recall (share of real samples
    inside the generated manifold), Kynkäänniemi et al. 2019."""
    real, generated = np.asarray(real, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    if min(len(real), len(generated)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set.")

    def covered(points, support):
        radii = _kth_neighbour_radii(support, k)
        distances = np.sqrt(np.maximum(_squared_distances(points, support), 0))
        return float((distances <= radii[None, :]).any(axis=1).mean())

    return covered(generated, real), covered(real, generated)
