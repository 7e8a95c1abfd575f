"""diffkit: train, guide and ship diffusion models with Hugging Face diffusers and accelerate.

The repository's `pipelines/`, `training/` and `model_cards/` folders install as `diffkit.pipelines`,
`diffkit.training` and `diffkit.model_cards`; the public classes and functions are importable from here:

    >>> from diffkit import ClassConditionalImagePipeline, load_stable_diffusion  # doctest: +SKIP
"""

import importlib
import importlib.metadata

from .pipelines import (
    ClassConditionalImagePipeline,
    ClassConditionalImg2ImgPipeline,
    ClassConditionalInpaintPipeline,
    DenoisingFilm,
    SuperResolutionPipeline,
    TextConditionalImagePipeline,
    TextConditionalImg2ImgPipeline,
    TextConditionalInpaintPipeline,
    UnconditionalImagePipeline,
    UnconditionalImg2ImgPipeline,
    UnconditionalInpaintPipeline,
)

__version__ = importlib.metadata.version("diffkit")

# Imported on first use: the Stable Diffusion loaders pull in diffusers' SD pipelines and OpenCV, the evaluation its
# feature networks, and none of them is needed to load or train a diffkit pipeline.
_LAZY_ATTRIBUTES = {
    "load_stable_diffusion": "diffkit.pipelines.loaders",
    "load_sdxl": "diffkit.pipelines.loaders",
    "load_sdxl_refiner": "diffkit.pipelines.loaders",
    "load_controlnet_canny": "diffkit.pipelines.loaders",
    "load_stable_diffusion_img2img": "diffkit.pipelines.loaders",
    "load_sdxl_img2img": "diffkit.pipelines.loaders",
    "load_controlnet_canny_img2img": "diffkit.pipelines.loaders",
    "load_stable_diffusion_inpaint": "diffkit.pipelines.loaders",
    "load_sdxl_inpaint": "diffkit.pipelines.loaders",
    "load_upscaler": "diffkit.pipelines.loaders",
    "upscale_tiled": "diffkit.pipelines.loaders",
    "task_pipeline": "diffkit.pipelines.loaders",
    "canny_edges": "diffkit.pipelines.canny",
    "push_pipeline_folder": "diffkit.pipelines.push",
    "evaluate": "diffkit.training.evaluate",
    "prepare_real_reference": "diffkit.training.evaluate",
    "score": "diffkit.training.evaluate",
}

__all__ = [
    "ClassConditionalImagePipeline",
    "ClassConditionalImg2ImgPipeline",
    "ClassConditionalInpaintPipeline",
    "DenoisingFilm",
    "SuperResolutionPipeline",
    "TextConditionalImagePipeline",
    "TextConditionalImg2ImgPipeline",
    "TextConditionalInpaintPipeline",
    "UnconditionalImagePipeline",
    "UnconditionalImg2ImgPipeline",
    "UnconditionalInpaintPipeline",
    *_LAZY_ATTRIBUTES,
]


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))
