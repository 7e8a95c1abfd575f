"""Canny edge maps, the control images of the canny ControlNets."""

from typing import Union

import cv2
import numpy as np
from PIL import Image

# The pipelines' VAE downsamples by 8: control images must have sides that are multiples of it.
SIZE_MULTIPLE = 8


def check_image_side(value: int, argument: str) -> None:
    """Raise a `ValueError` naming `argument` unless `value` is a positive multiple of 8, suggesting the nearest."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % SIZE_MULTIPLE:
        nearest = SIZE_MULTIPLE
        if isinstance(value, (int, float)) and value > SIZE_MULTIPLE:
            nearest = int(value) - int(value) % SIZE_MULTIPLE
        raise ValueError(f"`{argument}` {value!r} must be a positive multiple of 8 (e.g. {nearest}).")


def canny_edges(
    image: Union[Image.Image, np.ndarray], low_threshold: int = 100, high_threshold: int = 200
) -> Image.Image:
    r"""
    Canny edges of `image` as a 3-channel black-and-white PIL image, cropped to sides that are multiples of 8.

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): an RGB, RGBA or grey image (arrays are HxW or HxWxC, uint8).
        low_threshold, high_threshold (`int`): OpenCV's hysteresis thresholds, 0 <= low < high <= 255 (gradients
            above `high_threshold` start an edge, those above `low_threshold` continue one).

    Example:

    ```py
    >>> from skimage.data import astronaut
    >>> edges = canny_edges(astronaut())
    >>> edges.size, edges.mode
    ((512, 512), 'RGB')

    ```
    """
    if not (isinstance(low_threshold, int) and isinstance(high_threshold, int)) or not (
        0 <= low_threshold < high_threshold <= 255
    ):
        raise ValueError(
            f"`low_threshold` {low_threshold!r} and `high_threshold` {high_threshold!r} must be integers with "
            "0 <= low_threshold < high_threshold <= 255; 100 and 200 are usual."
        )
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("L"))
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(
                f"`image` must be a uint8 array of shape HxW or HxWxC, but has dtype {image.dtype} and shape "
                f"{image.shape}; convert it with `(array * 255).astype(np.uint8)` if it holds values in [0, 1]."
            )
        array = image if image.ndim == 2 else np.asarray(Image.fromarray(image).convert("L"))
    else:
        raise ValueError(f"`image` must be a PIL image or a numpy array, but is a {type(image).__name__}.")
    height, width = (side - side % SIZE_MULTIPLE for side in array.shape)
    if height == 0 or width == 0:
        raise ValueError(f"`image` of size {array.shape[1]}x{array.shape[0]} is smaller than 8x8.")
    edges = cv2.Canny(array[:height, :width], low_threshold, high_threshold)
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))
