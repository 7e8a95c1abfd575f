# Copyright 2026 The diffkit authors. Licensed under the Apache License, Version 2.0.
#
# This file depends only on torch and diffusers so that it can be uploaded next to the weights and loaded with
# `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` by people who do not have diffkit installed.
"""Class-conditional image generation with classifier-free guidance."""

import inspect
import json
import math
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def one_hot_label_states(class_ids: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    r"""
    Turn class ids (the null class `num_classes` included) into the UNet's `encoder_hidden_states`.

    The UNet's `encoder_hid_proj` is a `Linear(num_classes + 1, cross_attention_dim)`; applied to a one-hot vector it
    is a learned embedding of each label (and of the null label), which cross-attention then reads as a sequence of
    length 1. Keeping the embedding inside the UNet means the pipeline needs no component beyond `unet`.
    """
    states = torch.nn.functional.one_hot(class_ids, num_classes + 1).to(dtype)
    return states[:, None, :]


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


class ClassConditionalImagePipeline(DiffusionPipeline):
    r"""
    Pipeline for class-conditional image generation with classifier-free guidance.

    The UNet reads the label as `encoder_hidden_states`: a one-hot vector over `num_classes + 1` entries (see
    [`one_hot_label_states`]), projected by the UNet's `encoder_hid_proj`. The last entry, `null_class_id`, is the
    "no label" condition that training substitutes with probability `condition_dropout`, which is what makes
    classifier-free guidance possible.

    Args:
        unet ([`~diffusers.UNet2DConditionModel`]):
            The denoising model, with `encoder_hid_dim_type="text_proj"` and `encoder_hid_dim=num_classes + 1`.
        scheduler ([`~diffusers.SchedulerMixin`]):
            Any diffusers scheduler made from the training scheduler's config, e.g.
            `DDIMScheduler.from_config(pipe.scheduler.config)`.
        num_classes (`int`):
            The number of real classes; defaults to `unet.config.encoder_hid_dim - 1`. Registered in
            `model_index.json`.
        null_class_id (`int`, *optional*):
            The id of the "no label" condition used by the unconditional branch of guidance. Defaults to
            `num_classes`, the last entry of the one-hot vector. Registered in `model_index.json`.
        id2label (`Dict[str, str]`, *optional*):
            Names of the classes by id, so that `class_labels` can be given as names. Registered with string keys, as
            JSON stores them. Defaults to the ids themselves.
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

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "model_output", "pred_original_sample"]

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
    def label2id(self) -> Dict[str, int]:
        return {name: int(i) for i, name in self.config.id2label.items()}

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

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, str, Sequence[Union[int, str]]],
        num_images_per_label: int = 1,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["ClassConditionalImagePipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        latents: Optional[torch.Tensor] = None,
        num_images_per_prompt: Optional[int] = None,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""
        Generate images of the requested classes.

        Args:
            class_labels (`int`, `str` or a list of them):
                The classes to generate, as ids (`3`) or names from `pipe.config.id2label` (`"seven"`).
            num_images_per_label (`int`, *optional*, defaults to 1):
                Images generated for each entry of `class_labels`; the output lists them label by label.
            num_inference_steps (`int`, *optional*, defaults to `pipe.config.num_inference_steps`):
                The number of denoising steps. 20 suits the DDPM scheduler that training saves (on the default
                job they match DDPM's 1000 within 1% in FD-classifier and 3% in FID-MobileNetV2; see
                benchmarks/bench_sampling.py); a distilled student saves its own few steps.
            guidance_scale (`float`, *optional*, defaults to `pipe.config.guidance_scale`):
                Classifier-free guidance scale `w` in `eps = eps_uncond + w * (eps_cond - eps_uncond)`. `1` uses only
                the conditional prediction (and skips the unconditional pass), `0` only the unconditional one. A
                guidance-distilled UNet takes it as an input instead, within `pipe.config.guidance_scale_range`, and
                runs one pass per step.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Generator(s) that make generation deterministic; a list gives one generator per image.
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
                The tensors passed to `callback_on_step_end`: `latents` (the sample after the step),
                `model_output` (the guided prediction of the step) and `pred_original_sample` (the clean image that
                prediction implies, in [-1, 1] before clipping; `pipelines.DenoisingFilm` records it).
            latents (`torch.Tensor`, *optional*):
                The starting noise, of the UNet's sample shape for every image of the call, instead of noise drawn
                from `generator`: diffusers' way to reproduce one sample or vary it.
            num_images_per_prompt (`int`, *optional*):
                diffusers' name for `num_images_per_label`; when given, it is used.

        Examples:

        ```py
        >>> import torch
        >>> from diffkit import ClassConditionalImagePipeline

        >>> # out/ is the --output_dir of `accelerate launch training/train.py`
        >>> pipe = ClassConditionalImagePipeline.from_pretrained("out/")
        >>> images = pipe(
        ...     class_labels=[3, "seven"], guidance_scale=4.0, num_inference_steps=50,
        ...     generator=torch.Generator().manual_seed(0),
        ... ).images
        >>> images[1].save("seven.png")
        >>> images[1].size
        (28, 28)

        ```

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the generated images, as `.images` or as the tuple's first
            element.
        """
        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        if num_inference_steps is None:
            num_inference_steps = self.config.num_inference_steps

        if num_images_per_prompt is not None:
            num_images_per_label = num_images_per_prompt
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
        self._guidance_scale = guidance_scale
        device = self._execution_device
        batch_size = len(label_ids) * num_images_per_label

        # 1. Encode the labels; the unconditional branch uses the null label
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

        # 2. Prepare the timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)

        # 3. Sample the initial noise
        latents = self.prepare_latents(batch_size, self.unet.dtype, device, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 4. Denoising loop
        for i, t in enumerate(self.progress_bar(timesteps)):
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
        if self.vae is not None and output_type != "latent":
            latents = self.decode_latents(latents)
        image = self.postprocess_image(latents, output_type)

        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
