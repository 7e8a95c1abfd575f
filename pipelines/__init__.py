"""diffkit pipelines and the tools around them.

The `pipeline_*.py` files hold one self-contained `DiffusionPipeline` each (they are uploaded beside the weights as
remote code). Beside them: `denoising_film.py` (a step callback), `loaders.py`, `canny.py` and `generate.py` (Stable
Diffusion, SDXL and ControlNet-canny), `edit.py` (inpaint, img2img and denoise from the shell), `push.py` (the Hub)
and `app.py` (the web demo).
"""

from .denoising_film import DenoisingFilm
from .pipeline_class_conditional_image import ClassConditionalImagePipeline
from .pipeline_class_conditional_img2img import ClassConditionalImg2ImgPipeline
from .pipeline_class_conditional_inpaint import ClassConditionalInpaintPipeline
from .pipeline_super_resolution import SuperResolutionPipeline
from .pipeline_text_conditional_image import TextConditionalImagePipeline
from .pipeline_text_conditional_img2img import TextConditionalImg2ImgPipeline
from .pipeline_text_conditional_inpaint import TextConditionalInpaintPipeline
from .pipeline_unconditional_image import UnconditionalImagePipeline
from .pipeline_unconditional_img2img import UnconditionalImg2ImgPipeline
from .pipeline_unconditional_inpaint import UnconditionalInpaintPipeline

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
]
