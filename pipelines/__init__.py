"""What a diffkit model is: its pipelines, and the Stable Diffusion family's loaders.

The `pipeline_*.py` files hold one self-contained `DiffusionPipeline` each (they are uploaded beside the weights as
remote code). Beside them: `denoising_film.py` (a step callback), `loaders.py` and `canny.py` (Stable Diffusion, SDXL
and ControlNet-canny). The tools that use them (commands, Hub pusher, web demo) live in `diffkit/`, never here.

Each class is imported on first use, so that importing one pipeline does not import them all.
"""

import importlib
import logging

# diffusers' Stable Diffusion pipelines import transformers' CLIPImageProcessor, and transformers then warns once that
# torchvision is missing and its PIL processor serves instead. That is how diffkit runs them (torchvision does not
# install beside the CPU torch it is tested with), so the warning would send users after a package they do not need.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision (not installed)" not in record.getMessage()
)

_CLASS_MODULES = {
    "ClassConditionalImagePipeline": "pipeline_class_conditional_image",
    "ClassConditionalImg2ImgPipeline": "pipeline_class_conditional_img2img",
    "ClassConditionalInpaintPipeline": "pipeline_class_conditional_inpaint",
    "DenoisingFilm": "denoising_film",
    "SuperResolutionPipeline": "pipeline_super_resolution",
    "TextConditionalImagePipeline": "pipeline_text_conditional_image",
    "TextConditionalImg2ImgPipeline": "pipeline_text_conditional_img2img",
    "TextConditionalInpaintPipeline": "pipeline_text_conditional_inpaint",
    "UnconditionalImagePipeline": "pipeline_unconditional_image",
    "UnconditionalImg2ImgPipeline": "pipeline_unconditional_img2img",
    "UnconditionalInpaintPipeline": "pipeline_unconditional_inpaint",
}

__all__ = list(_CLASS_MODULES)


def __getattr__(name):
    if name in _CLASS_MODULES:
        value = getattr(importlib.import_module(f"{__name__}.{_CLASS_MODULES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_CLASS_MODULES))
