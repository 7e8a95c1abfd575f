# Copyright 2026 The diffkit authors. Licensed under the Apache License, Version 2.0.
#
# This file depends only on torch and diffusers (with numpy and PIL, which diffusers needs) so that it can be
# uploaded next to the weights and loaded with `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` by
# people who do not have diffkit installed.
"""Class-conditional img2img editing and denoising with classifier-free guidance."""

import inspect
import json
import math
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DConditionModel
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


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


# Copied from diffkit.pipelines.pipeline_class_conditional_image.guidance_scale_embedding
def guidance_scale_embedding(guidance_scale: torch.Tensor, embedding_dim: int, dtype: torch.dtype) -> torch.Tensor:
    r"""
    The sinusoidal embedding of classifier-free guidance scales that a guidance-distilled UNet reads as
    `timestep_cond` (its config has `time_cond_proj_dim=embedding_dim`): `(len(guidance_scale), embedding_dim)`.

    As in diffusers' `LatentConsistencyModelPipeline.get_guidance_scale_embedding`, the embedded value is
    `w = guidance_scale - 1` (so scale 1, the conditional prediction alone, embeds `w = 0`), multiplied by 1000 like a
    timestep. `training/distill.py` trains the student with this same function.
    """
    w = (guidance_scale.float() - 1) * 1000.0
    half_dim = embedding_dim // 2
    frequencies = torch.exp(
        torch.arange(half_dim, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half_dim - 1))
    )
    angles = w[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding.to(dtype)


class ClassConditionalImg2ImgPipeline(DiffusionPipeline):
    r"""
    Pipeline for class-guided image-to-image editing (SDEdit) and denoising, on the UNet and scheduler of a
    [`ClassConditionalImagePipeline`].

    Made from a trained pipeline without copying weights: `ClassConditionalImg2ImgPipeline.from_pipe(pipe)` shares
    its `unet` and `scheduler` and takes its registered settings. It saves, pushes and loads like the base pipeline,
    with this file beside the weights.

    Args:
        unet ([`~diffusers.UNet2DConditionModel`]):
            The denoising model of a class-conditional diffkit run.
        scheduler ([`~diffusers.SchedulerMixin`]):
            Any diffusers scheduler made from the training scheduler's config.
        num_classes (`int`, *optional*):
            The number of real classes; defaults to `unet.config.encoder_hid_dim - 1`.
        null_class_id (`int`, *optional*):
            The "no label" condition of the unconditional branch; defaults to `num_classes`.
        id2label (`Dict[str, str]`, *optional*):
            Names of the classes by id.
        guidance_scale (`float`, *optional*, defaults to 4.0):
            The guidance scale used when `__call__` is not given one.
        num_inference_steps (`int`, *optional*, defaults to 20):
            The step count used when `__call__` is not given one (a distilled student saves its few steps).
        guidance_scale_range (`List[float]`, *optional*):
            For a guidance-distilled UNet (one with `time_cond_proj_dim`, made by `training/distill.py`): the
            `[min, max]` guidance scales it was trained on, outside which `__call__` refuses to sample.
        vae ([`~diffusers.AutoencoderKL`], *optional*):
            For a latent diffusion model: the UNet then denoises the VAE's latents (`unet.config.sample_size` is the
            latent side), which the VAE decodes into images at the end, with the `scaling_factor` and `shift_factor`
            of its config. Without it the UNet denoises pixels.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "model_output", "pred_original_sample"]

    # Copied from diffkit.pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__init__
    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        num_classes: Optional[int] = None,
        null_class_id: Optional[int] = None,
        id2label: Optional[Dict[str, str]] = None,
        guidance_scale: float = 4.0,
        num_inference_steps: int = 20,
        guidance_scale_range: Optional[List[float]] = None,
        vae: Optional[AutoencoderKL] = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        if num_classes is None:
            num_classes = unet.config.encoder_hid_dim - 1
        if null_class_id is None:
            null_class_id = num_classes
        if id2label is None:
            id2label = {str(i): str(i) for i in range(num_classes)}
        self.register_to_config(
            num_classes=num_classes,
            null_class_id=null_class_id,
            id2label={str(k): str(v) for k, v in id2label.items()},
            guidance_scale=guidance_scale,
            num_inference_steps=num_inference_steps,
            guidance_scale_range=None if guidance_scale_range is None else [float(s) for s in guidance_scale_range],
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

    # Copied from diffkit.pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.check_inputs
    def check_inputs(
        self,
        class_labels,
        num_images_per_label,
        num_inference_steps,
        guidance_scale,
        generator,
        output_type,
        callback_on_step_end_tensor_inputs,
    ):
        if class_labels is None or (not isinstance(class_labels, (int, str)) and len(class_labels) == 0):
            raise ValueError(
                f"`class_labels` must name at least one class, but is {class_labels!r}; pass e.g. [3, 'seven']."
            )
        label_ids = self.get_label_ids(class_labels)
        if (
            not isinstance(num_images_per_label, int)
            or isinstance(num_images_per_label, bool)
            or num_images_per_label < 1
        ):
            raise ValueError(f"`num_images_per_label` must be a positive integer, but is {num_images_per_label!r}.")
        # the sampling settings, checked alike by every guided pipeline
        if (
            not isinstance(num_inference_steps, int)
            or isinstance(num_inference_steps, bool)
            or num_inference_steps < 1
        ):
            raise ValueError(
                f"`num_inference_steps` must be a positive integer, but is {num_inference_steps!r}; "
                "use e.g. 20 (the saved DDPM scheduler's default) or 25 for DPM-Solver."
            )
        if (
            not isinstance(guidance_scale, (int, float))
            or isinstance(guidance_scale, bool)
            or not math.isfinite(guidance_scale)
            or guidance_scale < 0
        ):
            raise ValueError(
                f"`guidance_scale` must be a finite number >= 0, but is {guidance_scale!r}: 0 gives unconditional "
                "samples, 1 purely conditional ones, and larger values follow the label more closely."
            )
        # a guidance-distilled student, checked alike by every guided pipeline
        guidance_scale_range = self.config.get("guidance_scale_range")
        if self.unet.config.time_cond_proj_dim is not None and guidance_scale_range is not None:
            low, high = guidance_scale_range
            if not low <= guidance_scale <= high:
                raise ValueError(
                    f"`guidance_scale` {guidance_scale!r} is outside [{low}, {high}], the scales this distilled UNet "
                    "was trained on (it takes the scale as an input instead of running two branches): choose one in "
                    "that range, or distil again with a wider --guidance_scale_range."
                )
        batch_size = len(label_ids) * num_images_per_label
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but {batch_size} images are requested "
                f"({len(label_ids)} labels x {num_images_per_label} images per label): pass one generator per image "
                "or a single generator."
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
        return label_ids

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

    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.prepare_latents
    def prepare_latents(
        self,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
        generator,
        latents: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Gaussian noise of the UNet's sample shape (or the caller's `latents`, diffusers' way to reproduce or vary
        one sample), scaled to the scheduler's initial noise level."""
        sample_size = self.unet.config.sample_size
        if isinstance(sample_size, int):
            sample_size = (sample_size, sample_size)
        shape = (batch_size, self.unet.config.in_channels, *sample_size)
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(
                    f"`latents` has shape {tuple(latents.shape)}, but this call starts from noise of shape {shape} "
                    f"({batch_size} images of the UNet's {self.unet.config.in_channels}x{sample_size[0]}x"
                    f"{sample_size[1]} samples): pass noise of that shape, or a `generator` instead."
                )
            latents = latents.to(device=device, dtype=dtype)
        elif device.type == "mps":
            # randn does not work reproducibly on mps
            latents = randn_tensor(shape, generator=generator, dtype=dtype).to(device)
        else:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        # Sigma-based schedulers (Euler, Heun) start from noise of std `init_noise_sigma`; it is 1.0 for DDPM/DDIM.
        return latents * self.scheduler.init_noise_sigma

    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.decode_latents
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's images in [-1, 1] of scaled latents, as Stable Diffusion scales them:
        `latents = (vae.encode(x).latent_dist.sample() - shift_factor) * scaling_factor`."""
        shift_factor = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift_factor
        return self.vae.decode(latents).sample

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

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.prepare_image
    def prepare_image(self, image, argument: str = "image") -> torch.Tensor:
        r"""
        An image as the model's input, shape `(1, channels, height, width)` in [-1, 1] (see `image_size`).

        `image` is a `PIL.Image`, a numpy array (`(H, W)` or `(H, W, C)`, uint8 in [0, 255] or float in [0, 1]) or a
        torch tensor (`(C, H, W)` or `(1, C, H, W)`, float in [0, 1], as `output_type="pt"` returns). An RGB image
        for a 1-channel model is converted to grey (ITU-R 601 luma, as PIL does), with a note in the log; other
        channel counts the model cannot take are an error. The image is resized (bicubic) to the model's size when
        it differs.
        """
        pil_image = self.to_pil(image, argument)
        channels = self.image_channels()
        if channels not in (1, 3):
            raise ValueError(f"`{argument}` cannot feed a model of {channels}-channel images (1 or 3 are supported).")
        mode = "L" if channels == 1 else "RGB"
        if pil_image.mode != mode:
            if mode == "L":
                logger.info(f"`{argument}` is {pil_image.mode}; the model takes 1 channel, so it becomes grey.")
            pil_image = pil_image.convert(mode)
        size = self.image_size()
        if pil_image.size != (size[1], size[0]):
            logger.info(
                f"`{argument}` is {pil_image.size[0]}x{pil_image.size[1]}; the model makes {size[1]}x{size[0]} "
                "images, so it is resized (bicubic)."
            )
            pil_image = pil_image.resize((size[1], size[0]), PIL.Image.BICUBIC)
        array = np.asarray(pil_image, dtype=np.float32) / 255.0
        if array.ndim == 2:
            array = array[:, :, None]
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
        return tensor * 2 - 1

    @staticmethod
    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.split_batch
    def split_batch(image):
        """A batch as the pipelines return it (a `(B, H, W, C)` array of `output_type="np"`, a `(B, C, H, W)` tensor
        of `"pt"`) as the list of its images, which is taken as any list is; anything else as it is."""
        if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
            return list(image)
        return image

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

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.sample_size
    def sample_size(self) -> Tuple[int, int]:
        sample_size = self.unet.config.sample_size
        return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.image_size
    def image_size(self) -> Tuple[int, int]:
        """The images' (height, width): the UNet's sample size, times the VAE's down factor for a latent model."""
        height, width = self.sample_size()
        if self.vae is None:
            return height, width
        down_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return height * down_factor, width * down_factor

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.image_channels
    def image_channels(self) -> int:
        """The images' channels: the UNet's, or for a latent model the VAE's."""
        return self.unet.config.in_channels if self.vae is None else self.vae.config.in_channels

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.encode_images
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The scaled latents of `images` in [-1, 1], as `decode_latents` reads them: the mode of the VAE's latent
        distribution, so that an image always has the same latents."""
        shift_factor = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mode()
        return ((latents - shift_factor) * self.vae.config.scaling_factor).to(self.unet.dtype)

    def check_image_inputs(self, image, num_labels: int, strength, noise_level, num_inference_steps):
        """The images (one for every label, or one per label) and how far to noise them: `strength` or
        `noise_level`."""
        if image is None:
            raise ValueError("`image` is required: pass the image to edit or to denoise.")
        if isinstance(image, (list, tuple)) and len(image) not in (1, num_labels):
            raise ValueError(
                f"`image` is a list of {len(image)}, but `class_labels` has {num_labels} entries: pass one image for "
                "all, or one per label."
            )
        self.check_strength(strength, noise_level, num_inference_steps)

    def check_strength(self, strength, noise_level, num_inference_steps):
        """`strength` (img2img) or `noise_level` (denoising), not both; each in its range."""
        if strength is not None and noise_level is not None:
            raise ValueError(
                f"`strength` ({strength!r}) and `noise_level` ({noise_level!r}) were both given: pass `strength` to "
                "edit an image, or `noise_level` (the standard deviation of the noise it carries) to denoise it."
            )
        if strength is not None:
            if not isinstance(strength, (int, float)) or isinstance(strength, bool) or not 0 <= strength <= 1:
                raise ValueError(
                    f"`strength` must be a number in [0, 1], but is {strength!r}: 0 keeps the image, 1 redraws it "
                    "from noise."
                )
            if 0 < strength and int(num_inference_steps * strength) == 0:
                raise ValueError(
                    f"`strength` {strength} of {num_inference_steps} steps gives no denoising step: raise `strength` "
                    f"to at least {1 / num_inference_steps:.3g} or `num_inference_steps` to at least "
                    f"{math.ceil(1 / strength)}."
                )
        if noise_level is not None and (
            not isinstance(noise_level, (int, float)) or isinstance(noise_level, bool) or not noise_level >= 0
        ):
            raise ValueError(
                f"`noise_level` must be a number >= 0 (the noise's standard deviation, images in [-1, 1]), but is "
                f"{noise_level!r}."
            )
        if noise_level is not None and self.vae is not None:
            raise ValueError(
                f"`noise_level` {noise_level!r} removes noise from pixels, which this latent model (it has a `vae`) "
                "cannot do in its latents: pass `strength` instead (e.g. 0.3), which redraws the image."
            )

    def noise_to_signal(self, timestep) -> float:
        """`b / a` where the scheduler noises a clean image `x` to `a * x + b * noise` at `timestep`."""
        one, zero = torch.ones(1), torch.zeros(1)
        timestep = timestep.reshape(1)
        signal = self.scheduler.add_noise(one, zero, timestep).item()
        noise = self.scheduler.add_noise(zero, one, timestep).item()
        return noise / signal

    def start_index(self, strength: Optional[float], noise_level: Optional[float]) -> int:
        """The step of `self.scheduler.timesteps` where denoising starts.

        With `strength`, as diffusers' img2img pipelines: the last `int(num_inference_steps * strength)` steps run.
        With `noise_level`, the step whose noise-to-signal ratio is nearest to it (on a log scale), since an image
        `x + noise_level * noise` is the scheduler's noisy sample at that step, scaled by its signal coefficient.
        """
        timesteps = self.scheduler.timesteps
        if noise_level is None:
            num_steps = len(timesteps) // self.scheduler.order
            return (num_steps - int(num_steps * strength)) * self.scheduler.order
        ratios = np.array([self.noise_to_signal(t) for t in timesteps])
        if noise_level > ratios.max() * (1 + 1e-4):  # the tolerance absorbs float32 rounding of the ratio
            raise ValueError(
                f"`noise_level` {noise_level} is beyond the schedule's maximum ({ratios.max():.3g} at its first "
                "step): "
                "this model cannot remove that much noise; it would have to generate the image anew."
            )
        return int(np.argmin(np.abs(np.log(ratios) - math.log(noise_level))))

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
        image: Union[PIL.Image.Image, np.ndarray, torch.Tensor, List],
        class_labels: Union[int, str, Sequence[Union[int, str]]],
        strength: Optional[float] = None,
        noise_level: Optional[float] = None,
        num_images_per_label: int = 1,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["ClassConditionalImg2ImgPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        num_images_per_prompt: Optional[int] = None,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""
        Edit `image` towards a class (img2img), or remove the Gaussian noise it carries (denoising).

        - `strength` (img2img, SDEdit): the image is noised to the step that `strength` selects and denoised from
          there with classifier-free guidance: small values keep the layout, 1 redraws it from noise.
        - `noise_level` (denoising): the image already carries noise of that standard deviation (in the [-1, 1]
          range); denoising starts at the step of that noise level and adds no noise of its own.

        Args:
            image (`PIL.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                PIL, numpy (uint8, or float in [0, 1]) or torch (float in [0, 1]); resized to the model's size. One
                image for every label, or one per entry of `class_labels`.
            class_labels (`int`, `str` or a list of them):
                The classes to edit towards, as ids or names from `pipe.config.id2label`.
            strength (`float`, *optional*, defaults to 0.6 unless `noise_level` is given):
                How much of the schedule to run, in [0, 1]; 0 returns the image unchanged.
            noise_level (`float`, *optional*):
                The standard deviation of the noise in `image` (images in [-1, 1]; on uint8 images, sigma / 127.5);
                0 returns the image unchanged.
            num_images_per_label (`int`, *optional*, defaults to 1):
                Images made for each entry of `class_labels`.
            num_inference_steps (`int`, *optional*, defaults to 20):
                Steps of the whole schedule; `strength` or `noise_level` selects the last part of it.
            guidance_scale (`float`, *optional*, defaults to `pipe.config.guidance_scale`):
                Classifier-free guidance scale, as in [`ClassConditionalImagePipeline`].
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Generator(s) that make the result deterministic; a list gives one generator per image.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` (`(batch, height, width, channels)` in [0, 1]), `"pt"` or `"latent"` (the final
                sample itself, undecoded, in the model's range).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`~diffusers.ImagePipelineOutput`] instead of a plain tuple.
            callback_on_step_end (`Callable`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`.
            callback_on_step_end_tensor_inputs (`List[str]`, *optional*, defaults to `["latents"]`):
                The tensors passed to `callback_on_step_end`: `latents`, `model_output`, `pred_original_sample`.
            num_images_per_prompt (`int`, *optional*):
                diffusers' name for `num_images_per_label`; when given, it is used.

        Examples:

        ```py
        >>> import numpy as np
        >>> import torch
        >>> from diffkit import ClassConditionalImagePipeline, ClassConditionalImg2ImgPipeline

        >>> pipe = ClassConditionalImagePipeline.from_pretrained("out/")
        >>> img2img = ClassConditionalImg2ImgPipeline.from_pipe(pipe)  # shares the weights, loads nothing
        >>> generator = torch.Generator().manual_seed(0)
        >>> # every output form of a pipeline is a valid input; "np" gives (1, 28, 28, 1) in [0, 1]
        >>> three = pipe(class_labels="three", generator=generator, output_type="np").images
        >>> eight = img2img(image=three, class_labels="eight", strength=0.6, generator=generator).images[0]

        >>> # Denoising starts at the noise level the image has: the noise's std in the pipeline's [-1, 1] range
        >>> noise_level = 0.4
        >>> noisy_three = (three + np.random.default_rng(0).normal(0, noise_level / 2, three.shape)).clip(0, 1)
        >>> clean = img2img(image=noisy_three, class_labels="three", noise_level=noise_level).images[0]
        >>> eight.size, clean.size
        ((28, 28), (28, 28))

        ```

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the edited or denoised images.
        """
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        if num_inference_steps is None:
            num_inference_steps = self.config.num_inference_steps

        if num_images_per_prompt is not None:
            num_images_per_label = num_images_per_prompt
        image = self.split_batch(image)
        # 0. Check inputs. Raise an error if not correct
        label_ids = self.check_inputs(
            class_labels,
            num_images_per_label,
            num_inference_steps,
            guidance_scale,
            generator,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        self.check_image_inputs(image, len(label_ids), strength, noise_level, num_inference_steps)
        if strength is None and noise_level is None:
            strength = 0.6
        images = image if isinstance(image, (list, tuple)) else [image]
        original = torch.cat([self.prepare_image(x) for x in images])
        self._guidance_scale = guidance_scale
        device = self._execution_device
        batch_size = len(label_ids) * num_images_per_label
        per_image = torch.arange(len(label_ids)).repeat_interleave(num_images_per_label)
        original = original[per_image % len(original)].to(device=device, dtype=self.unet.dtype)
        # a latent model edits the image's latents
        if self.vae is not None:
            original = self.encode_images(original)

        # 1. Encode the labels; the unconditional branch uses the null label
        # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
        # lines "class_ids = torch.tensor(label_ids" to "encoder_hidden_states = one_hot_label_states"
        class_ids = torch.tensor(label_ids, device=device).repeat_interleave(num_images_per_label)
        null_ids = torch.full_like(class_ids, self.config.null_class_id)
        # A guidance-distilled UNet reads the scale through `timestep_cond` and needs the conditional branch only.
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scales = torch.full((batch_size,), float(guidance_scale), device=device)
            timestep_cond = guidance_scale_embedding(scales, self.unet.config.time_cond_proj_dim, self.unet.dtype)
        # Guidance scale 1 is the conditional prediction alone and 0 the unconditional one: evaluate only the
        # branch that is needed. Otherwise both branches run in one batched forward pass.
        if guidance_scale == 1 or timestep_cond is not None:
            model_class_ids = class_ids
        elif guidance_scale == 0:
            model_class_ids = null_ids
        else:
            model_class_ids = torch.cat([null_ids, class_ids])
        encoder_hidden_states = one_hot_label_states(model_class_ids, self.config.num_classes, self.unet.dtype)

        # 2. Prepare the timesteps: the part of the schedule that `strength` or `noise_level` selects
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if strength == 0 or noise_level == 0:
            timesteps = self.scheduler.timesteps[:0]
        else:
            start = self.start_index(strength, noise_level)
            timesteps = self.scheduler.timesteps[start:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(start)
        self._num_timesteps = len(timesteps)

        # 3. The starting sample: the image noised to the first step (img2img), or the noisy image itself, scaled
        # to the scheduler's form of a sample at that step (denoising)
        if len(timesteps) == 0:
            latents = original
        elif noise_level is None:
            noise = self.prepare_latents(batch_size, self.unet.dtype, device, generator)
            noise = noise / self.scheduler.init_noise_sigma
            latents = self.scheduler.add_noise(original, noise, timesteps[:1])
        else:
            signal = self.scheduler.add_noise(torch.ones(1), torch.zeros(1), timesteps[:1].cpu()).item()
            latents = original * signal
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 4. Denoising loop
        for i, t in enumerate(self.progress_bar(timesteps)):
            # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
            # lines "# expand the latents when both" to "latents = callback_outputs.pop"
            # expand the latents when both guidance branches run in one pass
            branches = len(encoder_hidden_states) // batch_size
            latent_model_input = torch.cat([latents] * branches) if branches > 1 else latents
            latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)

            # predict the model output and apply classifier-free guidance
            model_output = self.unet(
                latent_model_input, t, encoder_hidden_states=encoder_hidden_states, timestep_cond=timestep_cond
            ).sample
            if branches > 1:
                model_output_uncond, model_output_cond = model_output.chunk(2)
                model_output = model_output_uncond + self.guidance_scale * (model_output_cond - model_output_uncond)

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

        # 5. Decode the latents (a latent model), and post-process from [-1, 1] to [0, 1]
        # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
        # lines "if self.vae is not None and output_type" to "return ImagePipelineOutput(images=image)"
        if self.vae is not None and output_type != "latent":
            latents = self.decode_latents(latents)
        image = self.postprocess_image(latents, output_type)

        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
