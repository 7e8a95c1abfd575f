# Copyright 2026 The diffkit authors. Licensed under the Apache License, Version 2.0.
#
# This file depends only on torch, diffusers and transformers (which the text encoder needs anyway) so that it can
# be uploaded next to the weights and loaded with `DiffusionPipeline.from_pretrained(repo_id,
# trust_remote_code=True)` by people who do not have diffkit installed.
"""Text-conditional image generation in pixel space with classifier-free guidance."""

import inspect
import json
import math
import os
import shutil
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DConditionModel
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The class a latent model's folder names when Stable Diffusion's own pipeline can load it (see `save_config`).
STABLE_DIFFUSION_PIPELINE = "StableDiffusionPipeline"
# CLIP's context length; sentence encoders allow more, but captions of small datasets are short.
DEFAULT_MAX_TEXT_LENGTH = 77


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


class TextConditionalImagePipeline(DiffusionPipeline):
    r"""
    Pipeline for text-to-image generation in pixel space with classifier-free guidance.

    The frozen `text_encoder`'s hidden states (see [`encode_text`]) are the UNet's `encoder_hidden_states`; when
    their width differs from the UNet's `cross_attention_dim`, the UNet's own `encoder_hid_proj` projects them.
    Training replaced captions with the empty string with probability `condition_dropout`, so the empty prompt is
    the unconditional branch of guidance, and a negative prompt replaces it.

    Args:
        unet ([`~diffusers.UNet2DConditionModel`]):
            The denoising model.
        scheduler ([`~diffusers.SchedulerMixin`]):
            Any diffusers scheduler made from the training scheduler's config.
        text_encoder ([`~transformers.PreTrainedModel`]):
            The frozen text encoder used in training: a CLIP text model or a BERT-style sentence encoder.
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            Its tokenizer.
        max_text_length (`int`, *optional*, defaults to 77):
            Tokens per prompt (longer prompts are cut with a warning). Registered in `model_index.json`.
        guidance_scale (`float`, *optional*, defaults to 4.0):
            The guidance scale used when `__call__` is not given one. Registered in `model_index.json`.
        num_inference_steps (`int`, *optional*, defaults to 20):
            The step count used when `__call__` is not given one (a distilled student saves its few steps).
            Registered in `model_index.json`.
        guidance_scale_range (`List[float]`, *optional*):
            For a guidance-distilled UNet (one with `time_cond_proj_dim`, made by `training/distill.py`): the
            `[min, max]` guidance scales it was trained on, outside which `__call__` refuses to sample. Registered in
            `model_index.json`.
        vae ([`~diffusers.AutoencoderKL`], *optional*):
            For a latent diffusion model: the UNet then denoises the VAE's latents (`unet.config.sample_size` is the
            latent side), which the VAE decodes into images at the end, with the `scaling_factor` and `shift_factor`
            of its config. Without it the UNet denoises pixels.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "model_output", "pred_original_sample", "prompt_embeds"]

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

    def save_config(self, save_directory: Union[str, os.PathLike], **kwargs):
        r"""
        Write `model_index.json`, plus this file beside it, so the folder loads without diffkit installed.

        `save_pretrained` (and therefore `push_to_hub`) calls this before anything is uploaded. `_class_name` becomes
        `[file stem, class name]`, the form with which `DiffusionPipeline.from_pretrained(folder_or_repo,
        trust_remote_code=True)` imports the class from the copied file. A latent model that diffusers'
        `StableDiffusionPipeline` reads as this class does (see `stable_diffusion_mismatch`) is saved as a Stable
        Diffusion folder instead: `_class_name` is `"StableDiffusionPipeline"`, so that
        `StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)` and plain
        `DiffusionPipeline.from_pretrained(folder)` load it with diffusers' own code, making the same images (no
        remote code runs), while `TextConditionalImagePipeline.from_pretrained(folder)` still loads this class.
        """
        # Copied from pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.save_config
        # lines "super().save_config(save_directory, **kwargs)" to "model_index["_class_name"] ="
        super().save_config(save_directory, **kwargs)
        source_file = inspect.getfile(type(self))
        module_name = os.path.splitext(os.path.basename(source_file))[0]
        shutil.copyfile(source_file, os.path.join(save_directory, f"{module_name}.py"))
        config_file = os.path.join(save_directory, self.config_name)
        with open(config_file, encoding="utf-8") as f:
            model_index = json.load(f)
        model_index["_class_name"] = [module_name, type(self).__name__]
        if self.vae is not None:
            mismatch = self.stable_diffusion_mismatch()
            if mismatch is None:
                model_index["_class_name"] = STABLE_DIFFUSION_PIPELINE
            else:
                logger.info(f"Saved for `trust_remote_code` loading, not as a Stable Diffusion folder: {mismatch}.")
        with open(config_file, "w", encoding="utf-8") as f:
            f.write(json.dumps(model_index, indent=2, sort_keys=True) + "\n")

    def stable_diffusion_mismatch(self) -> Optional[str]:
        """What would make diffusers' `StableDiffusionPipeline` sample a latent model otherwise than this class does,
        or None: it ignores `shift_factor`, needs sides divisible by 8, pads prompts to the tokenizer's
        `model_max_length` and passes the attention mask only when the encoder's config says `use_attention_mask`
        (`encode_text` always passes it), and sets a scheduler's `steps_offset` to 1 and `clip_sample` off."""
        if getattr(self.vae.config, "shift_factor", None):
            return f"the VAE has a shift_factor ({self.vae.config.shift_factor}), which that pipeline ignores"
        sample_size = self.unet.config.sample_size
        down_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if not isinstance(sample_size, int) or (sample_size * down_factor) % 8:
            return f"its images ({sample_size} x {down_factor} px) are not of a side divisible by 8"
        if self.tokenizer.model_max_length != self.config.max_text_length:
            return (
                f"the tokenizer pads to {self.tokenizer.model_max_length} tokens, not to max_text_length "
                f"{self.config.max_text_length}"
            )
        if getattr(self.text_encoder.config, "use_attention_mask", None) is not True:
            return "the text encoder's config does not say use_attention_mask"
        scheduler_config = self.scheduler.config
        if getattr(scheduler_config, "steps_offset", 1) != 1 or getattr(scheduler_config, "clip_sample", False):
            return "the scheduler's steps_offset is not 1 or it clips its samples"
        return None

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
        negative_prompt: Optional[Union[str, List[str]]] = None,
        num_images_per_prompt: int = 1,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["TextConditionalImagePipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        latents: Optional[torch.Tensor] = None,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""
        Generate images for text prompts.

        Args:
            prompt (`str` or `List[str]`, *optional*):
                The prompt(s). Pass `prompt_embeds` instead to reuse encoded prompts.
            negative_prompt (`str` or `List[str]`, *optional*):
                What the images should not show: it replaces the empty prompt in the unconditional branch of
                guidance. One string for all prompts, or one per prompt. Ignored when `guidance_scale` is 1.
            num_images_per_prompt (`int`, *optional*, defaults to 1):
                Images generated for each prompt; the output lists them prompt by prompt.
            num_inference_steps (`int`, *optional*, defaults to 20):
                The number of denoising steps. 20 suits the DDPM scheduler that training saves.
            guidance_scale (`float`, *optional*, defaults to `pipe.config.guidance_scale`):
                Classifier-free guidance scale `w` in `eps = eps_uncond + w * (eps_cond - eps_uncond)`. `1` uses only
                the conditional prediction (and skips the unconditional pass), `0` only the unconditional one.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Generator(s) that make generation deterministic; a list gives one generator per image.
            prompt_embeds (`torch.Tensor`, *optional*):
                Encoded prompts `(batch, tokens, dim)`, e.g. from `encode_text`; exclusive with `prompt`.
            negative_prompt_embeds (`torch.Tensor`, *optional*):
                Encoded negative prompts of the same shape as `prompt_embeds`; exclusive with `negative_prompt`.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"` (list of `PIL.Image`), `"np"` (`np.ndarray` of shape `(batch, height, width, channels)` in
                [0, 1]), `"pt"` (`torch.Tensor` of shape `(batch, channels, height, width)` in [0, 1]) or `"latent"`
                (the final sample itself: a latent model's latents, undecoded; an image-space model's sample in
                [-1, 1]).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`~diffusers.ImagePipelineOutput`] instead of a plain tuple.
            callback_on_step_end (`Callable`, *optional*):
                Called after each step as `callback_on_step_end(pipe, step_index, timestep, callback_kwargs)`, with
                the tensors named in `callback_on_step_end_tensor_inputs`; the entries of the dict it returns replace
                them.
            callback_on_step_end_tensor_inputs (`List[str]`, *optional*, defaults to `["latents"]`):
                The tensors passed to `callback_on_step_end`: `latents`, `model_output`, `pred_original_sample`
                (what `pipelines.DenoisingFilm` records) and `prompt_embeds`.
            latents (`torch.Tensor`, *optional*):
                The starting noise, of the UNet's sample shape for every image of the call, instead of noise drawn
                from `generator`: diffusers' way to reproduce one sample or vary it.

        Examples:

        ```py
        >>> import torch
        >>> from diffkit import TextConditionalImagePipeline

        >>> # out-text/ is the --output_dir of a `--conditioning text_conditional` training run
        >>> pipe = TextConditionalImagePipeline.from_pretrained("out-text/")
        >>> images = pipe(
        ...     ["a handwritten seven", "the digit 3"], negative_prompt="a blurry digit",
        ...     generator=torch.Generator().manual_seed(0),
        ... ).images
        >>> len(images), images[0].size
        (2, (28, 28))

        ```

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the generated images, as `.images` or as the tuple's first
            element.
        """
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        if num_inference_steps is None:
            num_inference_steps = self.config.num_inference_steps

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
        self._guidance_scale = guidance_scale
        device = self._execution_device
        batch_size = num_prompts * num_images_per_prompt
        if isinstance(prompt, str):
            prompt = [prompt]
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * num_prompts

        # 1. Encode the prompts; the unconditional branch uses the negative prompts, or the empty prompt
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

        # 2. Prepare the timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 3. Sample the initial noise
        latents = self.prepare_latents(batch_size, self.unet.dtype, device, generator, latents)
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
