"""diffkit: train, guide and ship diffusion models with Hugging Face diffusers and accelerate.

The repository's `pipelines/`, `training/` and `model_cards/` folders install as `diffkit.pipelines`,
`diffkit.training` and `diffkit.model_cards`; this folder holds the tools a person runs (`diffkit.cli`, `diffkit.push`,
`diffkit.app`). The public classes and functions are importable from here, each on first use, so that a command's
`--help` does not wait for torch and diffusers:

    >>> from diffkit import ClassConditionalImagePipeline, load_stable_diffusion
"""

import importlib
import importlib.metadata
import pkgutil

# Run from the repository root, this folder is found before the installed package, and it lacks the subpackages that
# setuptools maps from the sibling folders; extend_path adds the installed `diffkit` folder (the editable install's
# link tree, or site-packages) after it, so `diffkit.pipelines` is found there.
__path__ = pkgutil.extend_path(__path__, __name__)

# Before anything loads diffusers: keep the import-time notices of torchao and torch that no user can act on out of
# the terminal (training/library_notices.py says which, and why).
importlib.import_module("diffkit.training.library_notices")

__version__ = importlib.metadata.version("diffkit")

# Imported on first use: the pipelines pull in torch and diffusers, the Stable Diffusion loaders also diffusers' SD
# pipelines and OpenCV, the evaluation its feature networks.
_LAZY_ATTRIBUTES = {
    "ClassConditionalImagePipeline": "diffkit.pipelines",
    "ClassConditionalImg2ImgPipeline": "diffkit.pipelines",
    "ClassConditionalInpaintPipeline": "diffkit.pipelines",
    "DenoisingFilm": "diffkit.pipelines",
    "SuperResolutionPipeline": "diffkit.pipelines",
    "TextConditionalImagePipeline": "diffkit.pipelines",
    "TextConditionalImg2ImgPipeline": "diffkit.pipelines",
    "TextConditionalInpaintPipeline": "diffkit.pipelines",
    "UnconditionalImagePipeline": "diffkit.pipelines",
    "UnconditionalImg2ImgPipeline": "diffkit.pipelines",
    "UnconditionalInpaintPipeline": "diffkit.pipelines",
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
    "pipeline_quantization_config": "diffkit.pipelines.quantization",
    "push_pipeline_folder": "diffkit.training.hub",
    "evaluate": "diffkit.training.evaluate",
    "prepare_real_reference": "diffkit.training.evaluate",
    "score": "diffkit.training.evaluate",
}

__all__ = list(_LAZY_ATTRIBUTES)


def __getattr__(name):
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES))
