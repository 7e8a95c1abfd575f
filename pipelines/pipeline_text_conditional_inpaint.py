# Copyright 2026 The diffkit authors. Licensed under the Apache License, Version 2.0.
#
# This file depends only on torch, diffusers and transformers (which the text encoder needs anyway) so that it can
# be uploaded next to the weights and loaded with `DiffusionPipeline.from_pretrained(repo_id,
# trust_remote_code=True)` by people who do not have diffkit installed.
"""Text-conditional inpainting in pixel space with classifier-free guidance: fill the masked part towards a prompt."""

import inspect
import json
import math
import os
import shutil
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    ImagePipelineOutput,
    LCMScheduler,
    SchedulerMixin,
    UNet2DConditionModel,
)
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# CLIP's context length; sentence encoders allow more, but captions of small datasets are short.
DEFAULT_MAX_TEXT_LENGTH = 77
# Resampling steps again through timesteps already taken: only schedulers whose step depends on the timestep alone
# (no history of past steps, unlike DPM-Solver, UniPC or Euler) allow it.
RESAMPLING_SCHEDULERS = (DDPMScheduler, DDIMScheduler)


# Copied from diffkit.pipelines.pipeline_text_conditional_image.encode_text
def encode_text(
    text_encoder: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: List[str],
    max_length: int,
    device: Optional[torch.device] = None,
    warn_on_truncation: bool = True,
) -> torch.Tensor:
    r"""
    The text encoder's last hidden states for `texts`, padded to `max_length` tokens: `(len(texts), max_length, dim)`.

    Training and the pipeline both call this, so a caption means the same to the UNet in both. The encoder sees the
    attention mask (BERT-style encoders must not attend to padding); the UNet reads every position, padding
    included, as Stable Diffusion's UNet does. Longer texts are cut to `max_length` tokens, with a warning that
    quotes what was cut.
    """
    device = device or text_encoder.device
    tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    if warn_on_truncation:
        untruncated = tokenizer(texts, padding="longest", return_tensors="pt")
        lengths = untruncated["attention_mask"].sum(dim=1).tolist()
        # Between the last token kept and the end-of-text token that closes every sequence.
        removed = [
            tokenizer.decode(ids[max_length - 1 : length - 1])
            for ids, length in zip(untruncated.input_ids, lengths)
            if length > max_length
        ]
        if removed:
            logger.warning(f"The text encoder reads at most {max_length} tokens; this part was cut: {removed}")
    attention_mask = tokens.get("attention_mask")
    hidden_states = text_encoder(
        tokens.input_ids.to(device),
        attention_mask=None if attention_mask is None else attention_mask.to(device),
    )[0]
    return hidden_states


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


class TextConditionalInpaintPipeline(DiffusionPipeline):
    r"""
    Pipeline for text-conditional inpainting with classifier-free guidance, on the components of a
    [`TextConditionalImagePipeline`].

    Made from a trained pipeline without copying weights: `TextConditionalInpaintPipeline.from_pipe(pipe)` shares its
    `unet`, `scheduler`, `text_encoder` and `tokenizer` and takes its registered `max_text_length` and
    `guidance_scale`. It saves, pushes and loads like the base pipeline, with this file beside the weights.

    Args:
        unet ([`~diffusers.UNet2DConditionModel`]):
            The denoising model of a `--conditioning text_conditional` diffkit run.
        scheduler ([`~diffusers.SchedulerMixin`]):
            Any diffusers scheduler made from the training scheduler's config.
        text_encoder ([`~transformers.PreTrainedModel`]):
            The frozen text encoder used in training.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        max_text_length (`int`, *optional*, defaults to 77):
            Tokens per prompt (longer prompts are cut with a warning).
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

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "model_output", "pred_original_sample", "prompt_embeds"]

    # Copied from diffkit.pipelines.pipeline_text_conditional_image.TextConditionalImagePipeline.__init__
    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        text_encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_text_length: int = DEFAULT_MAX_TEXT_LENGTH,
        guidance_scale: float = 4.0,
        num_inference_steps: int = 20,
        guidance_scale_range: Optional[List[float]] = None,
        vae: Optional[AutoencoderKL] = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, text_encoder=text_encoder, tokenizer=tokenizer, vae=vae)
        self.register_to_config(
            max_text_length=max_text_length,
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

    # Copied from diffkit.pipelines.pipeline_text_conditional_image.TextConditionalImagePipeline.encode_prompt
    def encode_prompt(
        self,
        prompt: Optional[List[str]],
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: Optional[List[str]] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        r"""
        Encode the prompts (and, for guidance, the negative prompts or the empty prompt), each repeated
        `num_images_per_prompt` times. Returns `(prompt_embeds, negative_prompt_embeds)`; the second is None
        without guidance.
        """
        max_length = self.config.max_text_length
        if prompt_embeds is None:
            prompt_embeds = encode_text(self.text_encoder, self.tokenizer, prompt, max_length, device)
        # The UNet's dtype; a pipeline loaded with `unet=None` to encode prompts only takes the encoder's, as Stable
        # Diffusion does.
        if self.unet is not None:
            dtype = self.unet.dtype
        elif self.text_encoder is not None:
            dtype = self.text_encoder.dtype
        else:
            dtype = prompt_embeds.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            # The empty prompt is the condition that training's caption dropout taught as "no caption".
            negative_prompt = negative_prompt or [""] * len(prompt_embeds)
            negative_prompt_embeds = encode_text(
                self.text_encoder, self.tokenizer, negative_prompt, max_length, device
            )
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0), negative_prompt_embeds

    # Copied from diffkit.pipelines.pipeline_text_conditional_image.TextConditionalImagePipeline.check_inputs
    def check_inputs(
        self,
        prompt,
        negative_prompt,
        prompt_embeds,
        negative_prompt_embeds,
        num_images_per_prompt,
        num_inference_steps,
        guidance_scale,
        generator,
        output_type,
        callback_on_step_end_tensor_inputs,
    ):
        if prompt is not None and prompt_embeds is not None:
            raise ValueError(
                "Both `prompt` and `prompt_embeds` were given; pass only one (`prompt_embeds` are the encoded prompt)."
            )
        if prompt is None and prompt_embeds is None:
            raise ValueError("Pass `prompt` (a string or a list of strings) or `prompt_embeds`.")
        if prompt is not None and not (
            isinstance(prompt, str)
            or (isinstance(prompt, list) and len(prompt) > 0 and all(isinstance(p, str) for p in prompt))
        ):
            raise ValueError(f"`prompt` must be a string or a non-empty list of strings, but is {prompt!r}.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("Both `negative_prompt` and `negative_prompt_embeds` were given; pass only one.")
        if negative_prompt is not None and not (
            isinstance(negative_prompt, str)
            or (isinstance(negative_prompt, list) and all(isinstance(p, str) for p in negative_prompt))
        ):
            raise ValueError(f"`negative_prompt` must be a string or a list of strings, but is {negative_prompt!r}.")
        batch_size = (1 if isinstance(prompt, str) else len(prompt)) if prompt is not None else len(prompt_embeds)
        if isinstance(negative_prompt, list) and len(negative_prompt) != batch_size:
            raise ValueError(
                f"`negative_prompt` has {len(negative_prompt)} entries but `prompt` has {batch_size}: pass one "
                "negative prompt per prompt, or a single string for all."
            )
        if prompt_embeds is not None and prompt_embeds.ndim != 3:
            raise ValueError(
                f"`prompt_embeds` must have shape (batch, tokens, dim), but has shape {tuple(prompt_embeds.shape)}."
            )
        if negative_prompt_embeds is not None:
            expected = prompt_embeds.shape if prompt_embeds is not None else None
            if expected is None:
                raise ValueError("`negative_prompt_embeds` need `prompt_embeds` (not `prompt`) beside them.")
            if negative_prompt_embeds.shape != expected:
                raise ValueError(
                    f"`negative_prompt_embeds` has shape {tuple(negative_prompt_embeds.shape)}, but `prompt_embeds` "
                    f"has {tuple(expected)}; they must match."
                )
        if (
            not isinstance(num_images_per_prompt, int)
            or isinstance(num_images_per_prompt, bool)
            or num_images_per_prompt < 1
        ):
            raise ValueError(f"`num_images_per_prompt` must be a positive integer, but is {num_images_per_prompt!r}.")
        # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.check_inputs
        # lines "# the sampling settings" to ""samples, 1 purely conditional ones"
        # with label->prompt
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
                "samples, 1 purely conditional ones, and larger values follow the prompt more closely."
            )
        # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.check_inputs
        # lines "# a guidance-distilled student" to ""that range, or distil again"
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
        if isinstance(generator, list) and len(generator) != batch_size * num_images_per_prompt:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but {batch_size * num_images_per_prompt} "
                f"images are requested ({batch_size} prompts x {num_images_per_prompt} images per prompt): pass one "
                "generator per image or a single generator."
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
        return batch_size

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

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.prepare_mask
    def prepare_mask(self, mask_image, image_size: Tuple[int, int]) -> torch.Tensor:
        r"""
        The mask as `(1, 1, height, width)` of 0 (keep) and 1 (fill) at the images' size (see `image_size`), from
        `mask_image` of the same size as the image (PIL / numpy / torch like `image`; any channels are averaged). It
        is resized with nearest neighbour and a soft mask is binarised at 0.5.
        """
        pil_mask = self.to_pil(mask_image, "mask_image")
        if pil_mask.size != image_size:
            raise ValueError(
                f"`mask_image` is {pil_mask.size[0]}x{pil_mask.size[1]} but `image` is "
                f"{image_size[0]}x{image_size[1]}: "
                "pass a mask of the image's size (both are then resized to the model's size together)."
            )
        pil_mask = pil_mask.convert("L")
        size = self.image_size()
        if pil_mask.size != (size[1], size[0]):
            pil_mask = pil_mask.resize((size[1], size[0]), PIL.Image.NEAREST)
        mask = torch.from_numpy(np.asarray(pil_mask, dtype=np.float32) / 255.0)[None, None]
        return (mask >= 0.5).to(torch.float32)

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

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.latent_mask
    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """`mask` on the latent grid of a latent model: a latent cell is filled where any pixel of its patch is, so
        that the generated latents cover every pixel to fill."""
        return torch.nn.functional.adaptive_max_pool2d(mask.float(), self.sample_size()).to(mask.dtype)

    # Copied from pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.check_image_inputs
    # with class_labels->prompt, labels->prompts, label->prompt
    def check_image_inputs(self, image, mask_image, num_prompts: int):
        """The images and masks: one shared by every prompt, or a list with one per entry of `prompt`."""
        for name, value in (("image", image), ("mask_image", mask_image)):
            if value is None:
                raise ValueError(f"`{name}` is required: pass the image to complete and the mask of what to fill.")
            if isinstance(value, (list, tuple)) and len(value) not in (1, num_prompts):
                raise ValueError(
                    f"`{name}` is a list of {len(value)}, but `prompt` has {num_prompts} entries: pass one "
                    f"{name} for all, or one per prompt."
                )

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.check_resampling
    def check_resampling(self, jump_length, jump_n_sample, num_inference_steps):
        """RePaint-style resampling needs a schedule with room to jump back, and a scheduler that can step again."""
        for name, value in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, but is {value!r}.")
        if jump_n_sample == 1:
            return
        if isinstance(self.scheduler, LCMScheduler):
            raise ValueError(
                f"`jump_n_sample` {jump_n_sample} resamples (RePaint), which a few-step consistency student cannot: "
                "each of its LCMScheduler steps jumps to a clean estimate and noises it afresh, so there is no "
                "short noising step to jump back along. Inpaint with `jump_n_sample=1`, or resample with the teacher."
            )
        if jump_length >= num_inference_steps:
            raise ValueError(
                f"`jump_length` {jump_length} leaves no step to jump back from with `num_inference_steps` "
                f"{num_inference_steps}: resampling jumps back after every `jump_length` steps past the first "
                f"{jump_length}; pass a `jump_length` below {num_inference_steps} (e.g. {num_inference_steps // 2})."
            )
        if not isinstance(self.scheduler, RESAMPLING_SCHEDULERS):
            raise ValueError(
                f"`jump_n_sample` {jump_n_sample} resamples, which steps again through timesteps already taken; "
                f"{type(self.scheduler).__name__} keeps a history of its past steps, so it cannot. Use "
                "`DDPMScheduler` (the saved default) or `DDIMScheduler` for resampling, or `jump_n_sample=1`."
            )

    @staticmethod
    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.jump_schedule
    def jump_schedule(num_steps: int, jump_length: int, jump_n_sample: int) -> List[int]:
        """The order in which the steps run: RePaint's schedule in step indices.

        After every `jump_length` steps (past the first `jump_length`, the end included), the sample is noised back
        `jump_length` steps and those steps run again, `jump_n_sample - 1` times: `num_steps + (jump_n_sample - 1)
        * (num_steps - jump_length)` steps when `jump_length` divides `num_steps`.
        """
        schedule = []
        for index in range(num_steps):
            schedule.append(index)
            steps_done = index + 1
            if jump_n_sample > 1 and steps_done > jump_length and steps_done % jump_length == 0:
                for _ in range(jump_n_sample - 1):
                    schedule.extend(range(steps_done - jump_length, steps_done))
        return schedule

    # Copied from pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.prepare_known_image
    # with class-conditional generation->text-to-image generation
    def prepare_known_image(self, image, mask_image, num_conditions: int, num_images_per_condition: int, device):
        """The known image and the mask, one per output image (condition by condition, as the conditions repeat): the
        images in [-1, 1] and the masks of 1 (fill) and 0 (keep), both on `device` in the UNet's dtype. One image or
        mask serves every condition, or a list gives one per condition."""
        images = image if isinstance(image, (list, tuple)) else [image]
        masks = mask_image if isinstance(mask_image, (list, tuple)) else [mask_image]
        if len(images) == 1 and len(masks) > 1:
            images = images * len(masks)
        original = torch.cat([self.prepare_image(x) for x in images])
        mask = torch.cat(
            [
                self.prepare_mask(m, self.to_pil(images[min(i, len(images) - 1)], "image").size)
                for i, m in enumerate(masks)
            ]
        )
        if mask.sum() == 0:
            logger.warning("`mask_image` is 0 everywhere: nothing is filled, and the images come back unchanged.")
        elif mask.min() == 1:
            message = "`mask_image` is 1 everywhere: nothing is kept, so this is plain text-to-image generation."
            logger.warning(message)
        per_image = torch.arange(num_conditions).repeat_interleave(num_images_per_condition)
        original = original[per_image % len(original)].to(device=device, dtype=self.unet.dtype)
        mask = mask[per_image % len(mask)].to(device=device, dtype=self.unet.dtype)
        return original, mask

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.paste_known_part
    def paste_known_part(self, latents, original, noise, mask, timesteps, index: int):
        """`latents` where the mask fills, and elsewhere the known image noised to the level of the step after
        `timesteps[index]` (the clean image after the last step)."""
        if index < len(timesteps) - 1:
            known = self.scheduler.add_noise(original, noise, timesteps[index + 1 : index + 2])
        else:
            known = original
        return mask * latents + (1 - mask) * known

    # Copied from diffkit.pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.jump_back
    def jump_back(self, sample: torch.Tensor, timesteps: torch.Tensor, from_index: int, to_index: int, generator):
        """The sample at the noise level of `timesteps[to_index]`, from one at that of `timesteps[from_index]` (the
        clean image when `from_index` is past the last step), drawn from the forward process as RePaint does."""
        alphas_cumprod = self.scheduler.alphas_cumprod.to(sample.device)
        alpha_from = (
            alphas_cumprod[timesteps[from_index]] if from_index < len(timesteps) else alphas_cumprod.new_ones(())
        )
        ratio = (alphas_cumprod[timesteps[to_index]] / alpha_from).to(sample.dtype)
        noise = randn_tensor(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return ratio**0.5 * sample + (1 - ratio) ** 0.5 * noise

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
        prompt: Optional[Union[str, List[str]]] = None,
        image: Optional[Union[PIL.Image.Image, np.ndarray, torch.Tensor, List]] = None,
        mask_image: Optional[Union[PIL.Image.Image, np.ndarray, torch.Tensor, List]] = None,
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        jump_length: int = 10,
        jump_n_sample: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["TextConditionalInpaintPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""
        Fill the masked part of `image` so that the whole matches the prompt.

        At every step the known part (mask 0) is replaced by the input image noised to the scheduler's next noise
        level, and the masked part (mask 1) is denoised with classifier-free guidance; the result keeps the known
        pixels exactly. Any scheduler the base pipeline takes works (DDPM, DDIM, DPM-Solver++, UniPC, Euler).

        Args:
            prompt (`str` or `List[str]`, *optional*):
                The prompt(s) to complete towards. Pass `prompt_embeds` instead to reuse encoded prompts.
            image (`PIL.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                The image to complete: PIL, numpy (uint8, or float in [0, 1]) or torch (float in [0, 1]); resized
                to the model's size. One image for every prompt, or one per prompt.
            mask_image (same types as `image`):
                1 (white) where to fill, 0 (black) where to keep, of the image's size; resized with nearest
                neighbour and binarised at 0.5 (so a soft mask becomes a hard one).
            negative_prompt (`str` or `List[str]`, *optional*):
                Replaces the empty prompt in the unconditional branch of guidance.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Completions made for each prompt.
            num_inference_steps (`int`, *optional*, defaults to 20):
                The number of denoising steps.
            guidance_scale (`float`, *optional*, defaults to `pipe.config.guidance_scale`):
                Classifier-free guidance scale, as in [`TextConditionalImagePipeline`].
            jump_length (`int`, *optional*, defaults to 10):
                With resampling, the steps jumped back each time (RePaint's `jump_length`).
            jump_n_sample (`int`, *optional*, defaults to 1):
                RePaint-style resampling for a better fit at the mask's edge: every `jump_length` steps, the sample is
                noised back `jump_length` steps and those run again, `jump_n_sample - 1` times. 1 (the default) turns
                it off; it needs `DDPMScheduler` or `DDIMScheduler` and costs `(jump_n_sample - 1) *
                (num_inference_steps - jump_length)` more UNet evaluations.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Generator(s) that make the completion deterministic; a list gives one generator per image.
            prompt_embeds (`torch.Tensor`, *optional*):
                Encoded prompts `(batch, tokens, dim)`; exclusive with `prompt`.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Encoded negative prompts of the same shape as `prompt_embeds`; exclusive with `negative_prompt`.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"`, `"np"` (`(batch, height, width, channels)` in [0, 1]), `"pt"` or `"latent"` (the final
                sample itself, undecoded, in the model's range).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`~diffusers.ImagePipelineOutput`] instead of a plain tuple.
            callback_on_step_end (`Callable`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`.
            callback_on_step_end_tensor_inputs (`List[str]`, *optional*, defaults to `["latents"]`):
                The tensors passed to `callback_on_step_end`: `latents`, `model_output`, `pred_original_sample`,
                `prompt_embeds`.

        Examples:

        ```py
        >>> import torch
        >>> from diffkit import TextConditionalImagePipeline, TextConditionalInpaintPipeline

        >>> pipe = TextConditionalImagePipeline.from_pretrained("out-text/")
        >>> inpaint = TextConditionalInpaintPipeline.from_pipe(pipe)  # shares the weights, loads nothing
        >>> digit = pipe("a handwritten three", generator=torch.Generator().manual_seed(0)).images[0]
        >>> mask = torch.zeros(1, 28, 28)
        >>> mask[:, 14:] = 1  # fill the bottom half
        >>> images = inpaint("a handwritten eight", image=digit, mask_image=mask).images
        >>> images[0].size
        (28, 28)

        ```

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the completed images.
        """
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        if num_inference_steps is None:
            num_inference_steps = self.config.num_inference_steps

        image = self.split_batch(image)
        mask_image = self.split_batch(mask_image)
        # 0. Check inputs. Raise an error if not correct
        num_prompts = self.check_inputs(
            prompt,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            num_images_per_prompt,
            num_inference_steps,
            guidance_scale,
            generator,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        self.check_image_inputs(image, mask_image, num_prompts)
        self.check_resampling(jump_length, jump_n_sample, num_inference_steps)
        self._guidance_scale = guidance_scale
        device = self._execution_device
        batch_size = num_prompts * num_images_per_prompt
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * num_prompts

        # 1. The known image and the mask, one per output image (prompt by prompt, as the prompts repeat)
        original, mask = self.prepare_known_image(image, mask_image, num_prompts, num_images_per_prompt, device)
        # Copied from pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.__call__
        # lines "# a latent model fills the image's latents" to "known, known_mask = self.encode_images"
        # a latent model fills the image's latents, in the latent cells that hold any pixel to fill
        known, known_mask = original, mask
        if self.vae is not None:
            known, known_mask = self.encode_images(original), self.latent_mask(mask)

        # 2. Encode the prompts; the unconditional branch uses the negative prompts, or the empty prompt
        # Copied from pipelines.pipeline_text_conditional_image.TextConditionalImagePipeline.__call__
        # lines "prompt_embeds, negative_prompt_embeds = self.encode_prompt(" to "encoder_hidden_states = torch.cat("
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            do_classifier_free_guidance=guidance_scale != 1 and self.unet.config.time_cond_proj_dim is None,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )
        # Guidance scale 1 is the conditional prediction alone and 0 the unconditional one: evaluate only the
        # branch that is needed. Otherwise both branches run in one batched forward pass.
        # A guidance-distilled UNet reads the scale through `timestep_cond` and needs the conditional branch only.
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scales = torch.full((batch_size,), float(guidance_scale), device=device)
            timestep_cond = guidance_scale_embedding(scales, self.unet.config.time_cond_proj_dim, self.unet.dtype)
        if guidance_scale == 1 or timestep_cond is not None:
            encoder_hidden_states = prompt_embeds
        elif guidance_scale == 0:
            encoder_hidden_states = negative_prompt_embeds
        else:
            encoder_hidden_states = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 3. Prepare the timesteps, and the order to run them in (each once, unless resampling repeats some)
        # Copied from pipelines.pipeline_class_conditional_inpaint.ClassConditionalInpaintPipeline.__call__
        # lines "self.scheduler.set_timesteps(num_inference_steps" to "latents = self.jump_back("
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        step_order = self.jump_schedule(len(timesteps), jump_length, jump_n_sample)

        # 4. Sample the initial noise; the same noise noises the known part at every step, so that a mask of ones
        # draws nothing more from `generator` and gives exactly the base pipeline's images
        latents = self.prepare_latents(batch_size, self.unet.dtype, device, generator)
        noise = latents / self.scheduler.init_noise_sigma
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 5. Denoising loop
        for i, index in enumerate(self.progress_bar(step_order)):
            t = timesteps[index]
            # resampling: jumped back, so noise the sample from the level after the last step up to this one's
            if i > 0 and index <= step_order[i - 1]:
                latents = self.jump_back(latents, timesteps, step_order[i - 1] + 1, index, generator)

            # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
            # lines "# expand the latents when both" to "latents = step_output.prev_sample"
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

            # put back the known part, noised to the level the next step expects (the clean image after the last)
            latents = self.paste_known_part(latents, known, noise, known_mask, timesteps, index)

            # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
            # lines "if callback_on_step_end is not None:" to "latents = callback_outputs.pop"
            if callback_on_step_end is not None:
                callback_kwargs = {}
                for k in callback_on_step_end_tensor_inputs:
                    callback_kwargs[k] = locals()[k]
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)

        # 6. Decode the latents (a latent model), put back the known pixels (the input itself), and post-process
        # from [-1, 1] to [0, 1]
        if self.vae is not None and output_type != "latent":
            latents = self.decode_latents(latents)
        if self.vae is None or output_type != "latent":  # the known pixels, where the sample is in pixels
            latents = mask * latents + (1 - mask) * original
        # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
        # lines "image = self.postprocess_image(latents, output_type)" to "return ImagePipelineOutput(images=image)"
        image = self.postprocess_image(latents, output_type)

        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
