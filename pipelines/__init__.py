"""diffkit pipelines: self-contained `DiffusionPipeline`s, one per file."""

from .denoising_film import DenoisingFilm
from .pipeline_class_conditional_image import ClassConditionalImagePipeline
from .pipeline_text_conditional_image import TextConditionalImagePipeline
from .pipeline_unconditional_image import UnconditionalImagePipeline

__all__ = [
    "ClassConditionalImagePipeline",
    "DenoisingFilm",
    "TextConditionalImagePipeline",
    "UnconditionalImagePipeline",
]
