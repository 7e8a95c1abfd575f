# Copyright 2026 The diffkit authors. Licensed under the Apache License, Version 2.0.
#
# This file depends only on torch and diffusers so that it can be uploaded next to the weights and loaded with
# `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` by people who do not have diffkit installed.
"""Super-resolution with a UNet that reads the upsampled low-resolution image (SR3, Cascaded Diffusion Models)."""

import inspect
import json
import math
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DConditionModel, UNet2DModel
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The noise level (in [0, 1]) reaches the UNet through its `class_embed_type="timestep"` embedding, the sinusoidal
# embedding of the diffusion timestep; scaled by this it spans the same range as the training timesteps.
NOISE_LEVEL_TIMESTEP_SCALE = 1000


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample `(B, C, H, W)` images to `size` x `size`, as training makes its low-resolution inputs."""
    return F.interpolate(images, size=(size, size), mode="area")


def upsample(low_resolution_images: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bicubic upsampling of images in [-1, 1] to the output `size`, clamped back to [-1, 1]."""
    upsampled = F.interpolate(low_resolution_images, size=size, mode="bicubic", align_corners=False)
    return upsampled.clamp(-1, 1)


def augment(upsampled: torch.Tensor, noise_level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    r"""
    Noise conditioning augmentation: `sqrt(1 - s^2) * x + s * noise` for the noise level `s` in [0, 1] of each image.

    The variance-preserving form of the diffusion itself, applied to the upsampled low-resolution image `x`, so a
    level of 0 leaves it untouched and 1 replaces it with noise. Training draws a level per image; sampling uses a
    fixed small one, so that the stage does not copy the artefacts of a base model's output.
    """
    level = noise_level.to(upsampled.dtype).view(-1, 1, 1, 1)
    return (1 - level**2).sqrt() * upsampled + level * noise


def noise_level_labels(noise_level: torch.Tensor) -> torch.Tensor:
    """The UNet's `class_labels` for noise levels in [0, 1]: timestep-like values for its "timestep" embedding."""
    return noise_level * NOISE_LEVEL_TIMESTEP_SCALE


# Copied from diffkit.pipelines.pipeline_class_conditional_image.one_hot_label_states
def one_hot_label_states(class_ids: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    r"""
    Turn class ids (the null class `num_classes` included) into the UNet's `encoder_hidden_states`.

    The UNet's `encoder_hid_proj` is a `Linear(num_classes + 1, cross_attention_dim)`; applied to a one-hot vector it
    is a learned embedding of each label (and of the null label), which cross-attention then reads as a sequence of
    length 1. Keeping the embedding inside the UNet means the pipeline needs no component beyond `unet`.
    """
    states = torch.nn.functional.one_hot(class_ids, num_classes + 1).to(dtype)
    return states[:, None, :]


class SuperResolutionPipeline(DiffusionPipeline):
    r"""
    Pipeline for diffusion super-resolution: one stage of a cascade, from `low_resolution` to the UNet's size.

    The UNet denoises an image of the output size while reading, as extra input channels, the low-resolution input
    upsampled (bicubic) to that size and noised to `noise_level` ([`augment`]); the level itself reaches the UNet
    through its `class_embed_type="timestep"` embedding. A stage trained with class labels also reads the label as
    `encoder_hidden_states` (as [`ClassConditionalImagePipeline`] does) and supports classifier-free guidance on it.

    Args:
        unet ([`~diffusers.UNet2DModel`] or [`~diffusers.UNet2DConditionModel`]):
            The denoising model, with `in_channels = 2 * out_channels` and `class_embed_type="timestep"`; a
            `UNet2DConditionModel` reads class labels as well.
        scheduler ([`~diffusers.SchedulerMixin`]):
            Any diffusers scheduler made from the training scheduler's config.
        low_resolution (`int`):
            The side of the square low-resolution input the stage was trained on. Registered in `model_index.json`.
        noise_level (`float`, *optional*, defaults to 0.1):
            The augmentation level used when `__call__` is not given one. Registered in `model_index.json`.
        max_noise_level (`float`, *optional*, defaults to 0.5):
            The highest level training drew; larger ones are refused. Registered in `model_index.json`.
        num_classes (`int`, *optional*):
            The number of classes of a class-conditional stage (0 for none); defaults to what the UNet reads.
        null_class_id (`int`, *optional*):
            The "no label" id of the unconditional branch of guidance; defaults to `num_classes`.
        id2label (`Dict[str, str]`, *optional*):
            Names of the classes by id, so that `class_labels` can be given as names.
        guidance_scale (`float`, *optional*, defaults to 1.0):
            The guidance scale used when `__call__` is not given one (class-conditional stages only).
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "model_output", "pred_original_sample"]

    def __init__(
        self,
        unet: Union[UNet2DModel, UNet2DConditionModel],
        scheduler: SchedulerMixin,
        low_resolution: Optional[int] = None,
        noise_level: float = 0.1,
        max_noise_level: float = 0.5,
        num_classes: Optional[int] = None,
        null_class_id: Optional[int] = None,
        id2label: Optional[Dict[str, str]] = None,
        guidance_scale: float = 1.0,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        if num_classes is None:
            encoder_hid_dim = getattr(unet.config, "encoder_hid_dim", None)
            num_classes = encoder_hid_dim - 1 if encoder_hid_dim else 0
        if null_class_id is None:
            null_class_id = num_classes
        if id2label is None:
            id2label = {str(i): str(i) for i in range(num_classes)}
        self.register_to_config(
            low_resolution=low_resolution,
            noise_level=noise_level,
            max_noise_level=max_noise_level,
            num_classes=num_classes,
            null_class_id=null_class_id,
            id2label={str(k): str(v) for k, v in id2label.items()},
            guidance_scale=guidance_scale,
        )

    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.save_config
    def save_config(self, save_directory: Union[str, os.PathLike], **kwargs):
        r"""
        Write `model_index.json`, plus this file beside it, so the folder loads without diffkit installed.

        `save_pretrained` (and therefore `push_to_hub`) calls this before anything is uploaded. `_class_name` becomes
        `[file stem, class name]`, the form with which `DiffusionPipeline.from_pretrained(folder_or_repo,
        trust_remote_code=True)` imports the class from the copied file.
        """
        super().save_config(save_directory, **kwargs)
        source_file = inspect.getfile(type(self))
        module_name = os.path.splitext(os.path.basename(source_file))[0]
        shutil.copyfile(source_file, os.path.join(save_directory, f"{module_name}.py"))
        config_file = os.path.join(save_directory, self.config_name)
        with open(config_file, encoding="utf-8") as f:
            model_index = json.load(f)
        model_index["_class_name"] = [module_name, type(self).__name__]
        with open(config_file, "w", encoding="utf-8") as f:
            f.write(json.dumps(model_index, indent=2, sort_keys=True) + "\n")

    @classmethod
    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline._dict_from_json_file
    def _dict_from_json_file(cls, json_file: Union[str, os.PathLike], **kwargs):
        # A folder written by `save_config` names its own copy of this file for `trust_remote_code` users. Loaded
        # through this class, the installed code is used instead, and no remote code is needed or run.
        # diffusers reads `_class_name` through this classmethod both in `download` (for a Hub repo) and in
        # `from_pretrained` (through the public `load_config`), so no public hook covers both. The keyword arguments
        # are passed on untouched because releases differ in them (0.35 passes `dduf_entries`, later ones do not).
        config = super()._dict_from_json_file(json_file, **kwargs)
        class_name = config.get("_class_name")
        if isinstance(class_name, list) and class_name[1] == cls.__name__:
            config["_class_name"] = cls.__name__
        return config

    @property
    # Copied from diffkit.pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.label2id
    def label2id(self) -> Dict[str, int]:
        return {name: int(i) for i, name in self.config.id2label.items()}

    # Copied from diffkit.pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.get_label_ids
    def get_label_ids(self, class_labels: Union[int, str, Sequence[Union[int, str]]]) -> List[int]:
        r"""Map labels given as ids or names (`pipe.config.id2label`) to ids; `ValueError` names any unknown one."""
        if isinstance(class_labels, (int, str)):
            class_labels = [class_labels]
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.flatten().tolist()
        label2id = self.label2id
        label_ids = []
        for label in class_labels:
            if isinstance(label, str):
                if label not in label2id:
                    raise ValueError(
                        f"`class_labels` contains the unknown label name {label!r}; known names are "
                        f"{sorted(label2id, key=label2id.get)}, or pass ids 0-{self.config.num_classes - 1}."
                    )
                label_ids.append(label2id[label])
            elif isinstance(label, int) and not isinstance(label, bool):
                if not 0 <= label < self.config.num_classes:
                    raise ValueError(
                        f"`class_labels` contains the label id {label}, which is out of range: ids go from 0 to "
                        f"{self.config.num_classes - 1} ({self.config.num_classes} classes)."
                    )
                label_ids.append(label)
            else:
                raise ValueError(
                    f"`class_labels` contains {label!r} of type {type(label).__name__}; pass label ids (int) or "
                    f"label names (str) from {list(label2id)}."
                )
        return label_ids

    @property
    def is_class_conditional(self) -> bool:
        return self.config.num_classes > 0

    def check_base(self, base: DiffusionPipeline):
        r"""
        Check that `base`'s images fit this stage's input, for a cascade: `stage(image=base(...).images)`.

        `base` is any pipeline with a UNet (a diffkit generation pipeline, or another stage); its output size must be
        this stage's `low_resolution` and its channels this stage's, else `ValueError` says which differs.
        """
        base_size, base_channels = base.unet.config.sample_size, base.unet.config.out_channels
        low = self.config.low_resolution
        if base_size != low and tuple(np.atleast_1d(base_size)) != (low, low):
            raise ValueError(
                f"The stages do not chain: the base makes {base_size} px images, but this stage upscales {low} px "
                f"ones; train the base at --resolution {low} or a stage with --low_resolution {base_size}."
            )
        if base_channels != self.unet.config.out_channels:
            raise ValueError(
                f"The stages do not chain: the base makes {base_channels}-channel images, but this stage upscales "
                f"{self.unet.config.out_channels}-channel ones."
            )

    def output_size(self) -> Tuple[int, int]:
        sample_size = self.unet.config.sample_size
        return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)

    @staticmethod
    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.to_pil
    def to_pil(image, argument: str) -> PIL.Image.Image:
        """`image` (PIL, numpy or torch, see `prepare_image`) as a PIL image; `ValueError` for what cannot be one."""
        if isinstance(image, PIL.Image.Image):
            return image
        if isinstance(image, torch.Tensor):
            if image.ndim == 4 and image.shape[0] == 1:
                image = image[0]
            if image.ndim != 3:
                raise ValueError(
                    f"`{argument}` is a tensor of shape {tuple(image.shape)}; pass (C, H, W) or (1, C, H, W)."
                )
            image = image.detach().float().cpu().permute(1, 2, 0).numpy()
        if not isinstance(image, np.ndarray):
            raise ValueError(
                f"`{argument}` is a {type(image).__name__}; pass a PIL image, a numpy array or a torch tensor."
            )
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
            raise ValueError(
                f"`{argument}` has shape {image.shape}: pass (H, W) grey or (H, W, 3) RGB (a "
                f"{image.shape[-1]}-channel array cannot be read as either; drop the alpha channel of RGBA images)."
            )
        if image.dtype != np.uint8:
            if image.size and (image.min() < 0 or image.max() > 1):
                raise ValueError(
                    f"`{argument}` holds values in [{image.min():.3g}, {image.max():.3g}]; float images must be in "
                    "[0, 1] (uint8 images in [0, 255])."
                )
            image = (image * 255).round().astype(np.uint8)
        return PIL.Image.fromarray(image)

    def prepare_image(self, image, argument: str = "image") -> torch.Tensor:
        r"""
        One low-resolution input as a `(1, channels, low_resolution, low_resolution)` tensor in [-1, 1].

        `image` is a `PIL.Image`, a numpy array (`(H, W)` or `(H, W, C)`, uint8 or float in [0, 1]) or a torch tensor
        (`(C, H, W)` or `(1, C, H, W)` in [0, 1]). Grey and RGB are converted to the model's channel count (RGB to
        grey by ITU-R 601 luma, as PIL does). A square image of another size is resized to `low_resolution` with a
        warning (area for shrinking, bicubic for enlarging); an image of another aspect ratio is an error.
        """
        pil_image = self.to_pil(image, argument)
        channels = self.unet.config.out_channels
        if channels not in (1, 3):
            raise ValueError(
                f"`{argument}` cannot feed a UNet with {channels} output channels (1 or 3 are supported)."
            )
        mode = "L" if channels == 1 else "RGB"
        if pil_image.mode != mode:
            if mode == "L":
                logger.info(f"`{argument}` is {pil_image.mode}; the model takes 1 channel, so it becomes grey.")
            pil_image = pil_image.convert(mode)
        size = self.config.low_resolution
        width, height = pil_image.size
        if (width, height) != (size, size):
            if width != height:
                raise ValueError(
                    f"`{argument}` is {width}x{height}, but this stage upscales square {size}x{size} images; crop it "
                    "to a square first (resizing would distort it)."
                )
            logger.warning(
                f"`{argument}` is {width}x{height}; this stage upscales {size}x{size} images, so it is resized to "
                f"{size}x{size} first."
            )
            resample = PIL.Image.BOX if width > size else PIL.Image.BICUBIC
            pil_image = pil_image.resize((size, size), resample)
        array = np.asarray(pil_image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1)[None] * 2 - 1

    def check_inputs(
        self,
        image,
        class_labels,
        num_images_per_image,
        num_inference_steps,
        noise_level,
        guidance_scale,
        output_type,
        callback_on_step_end_tensor_inputs,
    ) -> Tuple[List, Optional[List[int]]]:
        # A list, or a batch tensor / array, holds several images; anything else is one.
        is_batch = isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4
        images = list(image) if isinstance(image, (list, tuple)) or is_batch else [image]
        if len(images) == 0:
            raise ValueError("`image` is an empty list; pass at least one low-resolution image.")
        if (
            not isinstance(num_images_per_image, int)
            or isinstance(num_images_per_image, bool)
            or num_images_per_image < 1
        ):
            raise ValueError(f"`num_images_per_image` must be a positive integer, but is {num_images_per_image!r}.")
        if (
            not isinstance(num_inference_steps, int)
            or isinstance(num_inference_steps, bool)
            or num_inference_steps < 1
        ):
            raise ValueError(
                f"`num_inference_steps` must be a positive integer, but is {num_inference_steps!r}; use e.g. 20."
            )
        max_noise_level = self.config.max_noise_level
        if (
            not isinstance(noise_level, (int, float))
            or isinstance(noise_level, bool)
            or not math.isfinite(noise_level)
            or not 0 <= noise_level <= max_noise_level
        ):
            raise ValueError(
                f"`noise_level` must be a number in [0, {max_noise_level}] (the levels this stage was trained on), "
                f"but is {noise_level!r}; the stage's default is {self.config.noise_level}."
            )
        if (
            not isinstance(guidance_scale, (int, float))
            or isinstance(guidance_scale, bool)
            or not math.isfinite(guidance_scale)
            or guidance_scale < 0
        ):
            raise ValueError(f"`guidance_scale` must be a finite number >= 0, but is {guidance_scale!r}.")
        label_ids = None
        if self.is_class_conditional:
            if class_labels is None:
                raise ValueError(
                    f"This stage is class-conditional ({self.config.num_classes} classes): pass `class_labels`, one "
                    "per image or one for all, as ids or names from `pipe.config.id2label`."
                )
            label_ids = self.get_label_ids(class_labels)
            if len(label_ids) == 1:
                label_ids = label_ids * len(images)
            if len(label_ids) != len(images):
                raise ValueError(
                    f"`class_labels` has {len(label_ids)} labels for {len(images)} images; pass one per image or one "
                    "for all."
                )
        elif class_labels is not None:
            raise ValueError(
                "`class_labels` was given, but this stage was trained without class labels; drop it (the image "
                "alone conditions it)."
            )
        # Copied from pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.check_inputs
        # lines "if output_type not in OUTPUT_TYPES:" to "f"{self._callback_tensor_inputs}.""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, but is {output_type!r}.")
        unknown_inputs = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown_inputs:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` contains {unknown_inputs}; allowed are "
                f"{self._callback_tensor_inputs}."
            )
        return images, label_ids

    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.prepare_extra_step_kwargs
    def prepare_extra_step_kwargs(self, generator):
        step_parameters = inspect.signature(self.scheduler.step).parameters
        extra_step_kwargs = {}
        # Not all schedulers take a generator (DDIM does, PNDM does not): pass it only to those that do.
        if "generator" in step_parameters:
            extra_step_kwargs["generator"] = generator
        # DDIM clips or thresholds its predicted clean image, but by default still steps with the unclipped noise
        # prediction; under strong guidance that mismatch ruins the samples (4% of guided digits recognised
        # against 99% with the clipped one). Step with the noise that matches the clipped image.
        if "use_clipped_model_output" in step_parameters:
            extra_step_kwargs["use_clipped_model_output"] = True
        return extra_step_kwargs

    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.predict_original_sample
    def predict_original_sample(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """The clean image x_0 implied by `model_output` at `timestep` for the noisy `sample` x_t.

        For the variance-preserving schedulers (DDPM, DDIM, DPM-Solver, UniPC, PNDM), where
        x_t = sqrt(a) x_0 + sqrt(1 - a) eps and v = sqrt(a) eps - sqrt(1 - a) x_0 with a = alphas_cumprod[t].
        """
        if self.scheduler.init_noise_sigma != 1 or not hasattr(self.scheduler, "alphas_cumprod"):
            raise ValueError(
                f"{type(self.scheduler).__name__} does not denoise in the variance-preserving form, so the clean "
                "image cannot be computed from its sample here; use a scheduler that returns `pred_original_sample` "
                "(DDPM, DDIM, Euler) or a variance-preserving one (DPM-Solver, UniPC)."
            )
        alpha_prod = self.scheduler.alphas_cumprod.to(sample.device)[timestep].to(sample.dtype)
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type == "epsilon":
            return (sample - (1 - alpha_prod) ** 0.5 * model_output) / alpha_prod**0.5
        if prediction_type == "v_prediction":
            return alpha_prod**0.5 * sample - (1 - alpha_prod) ** 0.5 * model_output
        return model_output  # "sample": the model predicts x_0 itself

    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.postprocess_image
    def postprocess_image(self, sample: torch.Tensor, output_type: str):
        """Images in [0, 1] from samples in the model's range [-1, 1]: PIL images, a numpy array or a tensor; with
        `output_type="latent"` the sample itself, as diffusers' pipelines return it."""
        if output_type == "latent":
            return sample
        image = (sample / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return image
        image = image.cpu().permute(0, 2, 3, 1).float().numpy()
        return self.numpy_to_pil(image) if output_type == "pil" else image

    @property
    # Copied from diffkit.pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.guidance_scale
    def guidance_scale(self):
        return self._guidance_scale

    @property
    # Copied from diffkit.pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.num_timesteps
    def num_timesteps(self):
        return self._num_timesteps

    @torch.no_grad()
    def __call__(
        self,
        image,
        class_labels: Optional[Union[int, str, Sequence[Union[int, str]]]] = None,
        num_images_per_image: int = 1,
        num_inference_steps: int = 20,
        noise_level: Optional[float] = None,
        guidance_scale: Optional[float] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["SuperResolutionPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""
        Upscale low-resolution images to the UNet's size.

        Args:
            image (`PIL.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                The low-resolution input(s), `low_resolution` pixels square (see `prepare_image` for the formats and
                the resize rule). A batch tensor `(B, C, H, W)` or array `(B, H, W, C)` counts as B images.
            class_labels (`int`, `str` or a list of them, *optional*):
                For a class-conditional stage: the label of each image (or one for all), as ids or names.
            num_images_per_image (`int`, *optional*, defaults to 1):
                Outputs per input image; the output lists them image by image.
            num_inference_steps (`int`, *optional*, defaults to 20):
                The number of denoising steps.
            noise_level (`float`, *optional*, defaults to `pipe.config.noise_level`):
                The noise conditioning augmentation level in [0, `pipe.config.max_noise_level`] given to the input:
                higher levels trust the input less (useful for a base model's output, which is not a real image).
            guidance_scale (`float`, *optional*, defaults to `pipe.config.guidance_scale`):
                Classifier-free guidance on the class label (class-conditional stages only); 1 uses the conditional
                prediction alone.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Generator(s) that make the output deterministic; a list gives one generator per output image.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` (`(batch, height, width, channels)` in [0, 1]), `"pt"` (`(batch, channels, height,
                width)` in [0, 1]) or `"latent"` (the final sample itself, in [-1, 1]).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`~diffusers.ImagePipelineOutput`] instead of a plain tuple.
            callback_on_step_end (`Callable`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`.
            callback_on_step_end_tensor_inputs (`List[str]`, *optional*, defaults to `["latents"]`):
                The tensors passed to `callback_on_step_end`: `latents`, `model_output` and `pred_original_sample`
                (the clean image the step's prediction implies, in [-1, 1]; the web demo previews it).

        Examples:

        ```py
        >>> import torch
        >>> from diffkit import SuperResolutionPipeline

        >>> # sr/ is the --output_dir of `diffkit-train --conditioning super_resolution --low_resolution 14`
        >>> pipe = SuperResolutionPipeline.from_pretrained("sr/")
        >>> from PIL import Image

        >>> small = Image.open("digit-14px.png")
        >>> image = pipe(image=small, generator=torch.Generator().manual_seed(0)).images[0]
        >>> small.size, image.size
        ((14, 14), (28, 28))

        ```

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the upscaled images, as `.images` or the tuple's first
            element.
        """
        if noise_level is None:
            noise_level = self.config.noise_level
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale

        # 0. Check inputs. Raise an error if not correct
        images, label_ids = self.check_inputs(
            image,
            class_labels,
            num_images_per_image,
            num_inference_steps,
            noise_level,
            guidance_scale,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        low_resolution = torch.cat([self.prepare_image(img, "image") for img in images])
        batch_size = len(images) * num_images_per_image
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but {batch_size} images are requested "
                f"({len(images)} inputs x {num_images_per_image}): pass one generator per output image or a single "
                "one."
            )
        self._guidance_scale = guidance_scale
        device = self._execution_device
        dtype = self.unet.dtype
        output_size = self.output_size()

        # 1. Upsample the inputs and add the augmentation noise of `noise_level`
        low_resolution = low_resolution.to(device=device, dtype=dtype).repeat_interleave(num_images_per_image, dim=0)
        upsampled = upsample(low_resolution, output_size)
        levels = torch.full((batch_size,), float(noise_level), device=device, dtype=dtype)
        augmentation_noise = randn_tensor(upsampled.shape, generator=generator, device=device, dtype=dtype)
        condition_image = augment(upsampled, levels, augmentation_noise)

        # 2. Encode the labels of a class-conditional stage; the unconditional branch of guidance uses the null label
        unet_kwargs = {}
        branches = 1
        if label_ids is not None:
            class_ids = torch.tensor(label_ids, device=device).repeat_interleave(num_images_per_image)
            null_ids = torch.full_like(class_ids, self.config.null_class_id)
            if guidance_scale == 1:
                model_class_ids = class_ids
            elif guidance_scale == 0:
                model_class_ids = null_ids
            else:
                model_class_ids = torch.cat([null_ids, class_ids])
                branches = 2
            unet_kwargs["encoder_hidden_states"] = one_hot_label_states(
                model_class_ids, self.config.num_classes, dtype
            )
        condition_image = torch.cat([condition_image] * branches)
        unet_kwargs["class_labels"] = noise_level_labels(torch.cat([levels] * branches))

        # 3. Prepare the timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 4. Sample the initial noise, of the output's shape
        shape = (batch_size, self.unet.config.out_channels, *output_size)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 5. Denoising loop
        for i, t in enumerate(self.progress_bar(timesteps)):
            # the noisy image (once per guidance branch), beside the augmented upsampled input
            latent_model_input = torch.cat([latents] * branches) if branches > 1 else latents
            latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
            latent_model_input = torch.cat([latent_model_input, condition_image], dim=1)

            # predict the model output (noise or velocity, as the scheduler was trained)
            model_output = self.unet(latent_model_input, t, **unet_kwargs).sample

            # classifier-free guidance on the label
            if branches > 1:
                model_output_uncond, model_output_cond = model_output.chunk(2)
                model_output = model_output_uncond + self.guidance_scale * (model_output_cond - model_output_uncond)

            # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
            # lines "# compute the previous sample" to "latents = callback_outputs.pop"
            # compute the previous sample: x_t -> x_t-1
            step_output = self.scheduler.step(model_output, t, latents, **extra_step_kwargs)
            if "pred_original_sample" in callback_on_step_end_tensor_inputs:
                pred_original_sample = getattr(step_output, "pred_original_sample", None)
                if pred_original_sample is None:  # DPM-Solver and UniPC do not return their estimate
                    pred_original_sample = self.predict_original_sample(model_output, t, latents)
            latents = step_output.prev_sample

            if callback_on_step_end is not None:
                callback_kwargs = {}
                for k in callback_on_step_end_tensor_inputs:
                    callback_kwargs[k] = locals()[k]
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)

        # 6. Post-process from [-1, 1] to [0, 1]
        # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
        # lines "image = self.postprocess_image(latents, output_type)" to "return ImagePipelineOutput(images=image)"
        image = self.postprocess_image(latents, output_type)

        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
