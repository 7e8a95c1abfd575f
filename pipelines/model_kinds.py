"""The kinds of model that diffkit's tools run, and the pipeline class of each task on each kind.

A tool learns what a folder or Hub repo holds from its `model_index.json` alone, before any weights load:

    >>> model_kind({"_class_name": ["pipeline_class_conditional_image", "ClassConditionalImagePipeline"]})
    'class_conditional'
    >>> model_kind({"_class_name": "StableDiffusionXLPipeline"})
    'sdxl'
    >>> pipeline_class_name("text_conditional", "inpaint")
    'TextConditionalInpaintPipeline'

This file needs only the standard library: the web demo uses it on a Hugging Face Space, where it is uploaded beside
the app and the pipeline files, without diffkit.
"""

import importlib
import inspect
from typing import Optional

# The names of the kinds of diffkit model, as training (`--conditioning`), the pipelines and the tools say them.
UNCONDITIONAL = "unconditional"
CLASS_CONDITIONAL = "class_conditional"
TEXT_CONDITIONAL = "text_conditional"
SUPER_RESOLUTION = "super_resolution"
DIFFKIT_KINDS = (UNCONDITIONAL, CLASS_CONDITIONAL, TEXT_CONDITIONAL, SUPER_RESOLUTION)
# The names `--conditioning` took before it took the kinds' names. They still work, on the command line and in the
# training_config.json and checkpoints of earlier runs, which resume and evaluate as before.
FORMER_CONDITIONING_NAMES = {
    "none": UNCONDITIONAL,
    "class": CLASS_CONDITIONAL,
    "text": TEXT_CONDITIONAL,
    "low_resolution": SUPER_RESOLUTION,
}

# The Stable Diffusion family, run through diffusers' own pipelines (pipelines/loaders.py).
STABLE_DIFFUSION = "stable_diffusion"
SDXL = "sdxl"

# What a diffkit text-conditional latent model's folder names as its class when Stable Diffusion's pipeline loads it.
STABLE_DIFFUSION_PIPELINE = "StableDiffusionPipeline"

# What a task does to a model of each kind, by the task's name: `generate` samples from noise, `img2img` redraws a
# given image (and, with a noise level, denoises it), `inpaint` fills a masked part, `upscale` super-resolves.
GENERATE = "generate"
IMG2IMG = "img2img"
INPAINT = "inpaint"
UPSCALE = "upscale"

# {kind: {task: (module in this package, class)}}: the one place that says which diffkit pipeline does what.
PIPELINES = {
    UNCONDITIONAL: {
        GENERATE: ("pipeline_unconditional_image", "UnconditionalImagePipeline"),
        IMG2IMG: ("pipeline_unconditional_img2img", "UnconditionalImg2ImgPipeline"),
        INPAINT: ("pipeline_unconditional_inpaint", "UnconditionalInpaintPipeline"),
    },
    CLASS_CONDITIONAL: {
        GENERATE: ("pipeline_class_conditional_image", "ClassConditionalImagePipeline"),
        IMG2IMG: ("pipeline_class_conditional_img2img", "ClassConditionalImg2ImgPipeline"),
        INPAINT: ("pipeline_class_conditional_inpaint", "ClassConditionalInpaintPipeline"),
    },
    TEXT_CONDITIONAL: {
        GENERATE: ("pipeline_text_conditional_image", "TextConditionalImagePipeline"),
        IMG2IMG: ("pipeline_text_conditional_img2img", "TextConditionalImg2ImgPipeline"),
        INPAINT: ("pipeline_text_conditional_inpaint", "TextConditionalInpaintPipeline"),
    },
    SUPER_RESOLUTION: {
        UPSCALE: ("pipeline_super_resolution", "SuperResolutionPipeline"),
    },
}


def saved_class_name(config: dict) -> Optional[str]:
    """The pipeline class a `model_index.json` names (`_class_name` is a name, or `[module, name]` for remote code)."""
    class_name = config.get("_class_name")
    return class_name[1] if isinstance(class_name, (list, tuple)) else class_name


def loads_as_stable_diffusion(config: dict) -> bool:
    """Whether a `model_index.json` is that of a diffkit text-conditional latent model saved as a Stable Diffusion
    folder (`_class_name` is `StableDiffusionPipeline`, beside the `max_text_length` of its own class; see
    `TextConditionalImagePipeline.save_config`): diffusers' own pipeline loads it, and so does the diffkit class."""
    return config.get("_class_name") == STABLE_DIFFUSION_PIPELINE and "max_text_length" in config


def saved_kind_and_task(config: dict) -> tuple:
    """`(kind, task)` of the pipeline class that a `model_index.json` (or pipeline config) names: the kind is one of
    `DIFFKIT_KINDS`, `"sdxl"` or `"stable_diffusion"`, or None for anything else; the task is that of the diffkit
    class (a folder saved from an inpainting pipeline: `"inpaint"`), or None."""
    class_name = saved_class_name(config) or ""
    for kind, tasks in PIPELINES.items():
        for task, (_, name) in tasks.items():
            if class_name == name:
                return kind, task
    if loads_as_stable_diffusion(config):
        return TEXT_CONDITIONAL, GENERATE
    if class_name.startswith("StableDiffusionXL"):
        return SDXL, None
    if class_name.startswith("StableDiffusion"):
        return STABLE_DIFFUSION, None
    return None, None


def model_kind(config: dict) -> Optional[str]:
    """The kind of model whose `model_index.json` (or pipeline config) is `config` (see `saved_kind_and_task`). A
    folder saved from an img2img or inpainting pipeline is of the kind of the model it was made from."""
    return saved_kind_and_task(config)[0]


def model_tasks(kind: str) -> tuple:
    """The tasks that a diffkit model of `kind` can do, in the order of the table."""
    return tuple(PIPELINES[kind])


def pipeline_class_name(kind: str, task: str) -> str:
    """The name of the diffkit pipeline class that does `task` on a model of `kind`; a `ValueError` if none does."""
    if kind not in PIPELINES:
        raise ValueError(f"{kind!r} is not a kind of diffkit model; the kinds are {', '.join(DIFFKIT_KINDS)}.")
    if task not in PIPELINES[kind]:
        raise ValueError(f"A {kind} model cannot {task}; it can {', '.join(PIPELINES[kind])}.")
    return PIPELINES[kind][task][1]


def pipeline_class(kind: str, task: str):
    """The diffkit pipeline class that does `task` on a model of `kind`, imported from its file: from this package
    when diffkit is installed, or from the file beside this one where both were uploaded alone (a Space)."""
    class_name = pipeline_class_name(kind, task)
    module_name = PIPELINES[kind][task][0]
    module = importlib.import_module(f"{__package__}.{module_name}" if __package__ else module_name)
    return getattr(module, class_name)


def pipeline_sharing_modules(target_class, pipe):
    r"""
    A `target_class` pipeline made of `pipe`'s modules and settings, no weight loaded or copied: what
    `target_class.from_pipe(pipe)` makes, without the cast to one dtype that `from_pipe` ends with. diffusers casts
    every module there (to float32 unless told otherwise: a float16 pipeline would double in memory, and the original
    with it, since the modules are shared), and a quantised module cannot be cast at all.

    Each argument of `target_class.__init__` is taken from `pipe`'s components, else from its config (the settings
    kept with `register_to_config`), else left at its default.

    ```py
    >>> from diffkit import ClassConditionalImagePipeline, ClassConditionalInpaintPipeline
    >>> from diffkit.pipelines.model_kinds import pipeline_sharing_modules
    >>> pipe = ClassConditionalImagePipeline.from_pretrained("out")
    >>> inpaint = pipeline_sharing_modules(ClassConditionalInpaintPipeline, pipe)
    >>> inpaint.unet is pipe.unet
    True

    ```
    """
    components, config = pipe.components, dict(pipe.config)
    arguments = {}
    for name, parameter in inspect.signature(target_class.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if name in components:
            arguments[name] = components[name]
        elif name in config:
            arguments[name] = config[name]
    return target_class(**arguments)


def conditioning_kind(name: str) -> str:
    """The kind of model that `--conditioning NAME` trains, for its name or its former name (`class`, ...)."""
    return FORMER_CONDITIONING_NAMES.get(name, name)


def model_training_args(training_config: dict) -> dict:
    """The `train.py` flags that say what a run's model is (its kind, its data): the run's own, or for a student of
    `training/distill.py` (whose `training_config.json` names its teacher) the teacher's."""
    teacher = training_config.get("teacher")
    return teacher["args"] if teacher else training_config.get("args", {})
