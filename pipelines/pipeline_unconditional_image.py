# Copyright 2026 The diffkit authors. Licensed under the Apache License, Version 2.0.
#
# This file depends only on torch and diffusers so that it can be uploaded next to the weights and loaded with
# `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` by people who do not have diffkit installed.
"""Unconditional image generation with any diffusers scheduler."""

import inspect
import json
import os
import shutil
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# The step count when neither the call nor the pipeline's config (a distilled student's) gives one.
DEFAULT_NUM_INFERENCE_STEPS = 1000


class UnconditionalImagePipeline(DiffusionPipeline):
    r"""
    Pipeline for unconditional image generation, called like [`diffusers.DDPMPipeline`].

    With a [`~diffusers.DDPMScheduler`] and the same `generator` it produces exactly the images of `DDPMPipeline`
    given the same UNet and scheduler. Unlike `DDPMPipeline` it also drives schedulers that scale their inputs
    (Euler, Heun, ...) and validates its arguments before any work starts.

    Args:
        unet ([`~diffusers.UNet2DModel`]):
            The denoising model; its `sample_size` and `in_channels` fix the shape of the generated images.
        scheduler ([`~diffusers.SchedulerMixin`]):
            Any diffusers scheduler made from the training scheduler's config, e.g.
            `DDIMScheduler.from_config(pipe.scheduler.config)`.
        vae ([`~diffusers.AutoencoderKL`], *optional*):
            For a latent diffusion model: the UNet then denoises the VAE's latents (`unet.config.sample_size` is the
            latent side), which the VAE decodes into images at the end, with the `scaling_factor` and `shift_factor`
            of its config. Without it the UNet denoises pixels.
        num_inference_steps (`int`, *optional*):
            The step count used when `__call__` is not given one: a distilled student's few steps (made by
            `training/distill.py`). Registered in `model_index.json`.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "model_output", "pred_original_sample"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        vae: Optional[AutoencoderKL] = None,
        num_inference_steps: Optional[int] = None,
    ):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)
        self.register_to_config(num_inference_steps=num_inference_steps)

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

    def check_inputs(
        self, batch_size, num_inference_steps, generator, output_type, callback_on_step_end_tensor_inputs
    ):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, but is {batch_size!r}.")
        if (
            not isinstance(num_inference_steps, int)
            or isinstance(num_inference_steps, bool)
            or num_inference_steps < 1
        ):
            raise ValueError(
                f"`num_inference_steps` must be a positive integer, but is {num_inference_steps!r}; "
                "use e.g. 1000 for DDPM or 25-50 for DDIM and DPM-Solver."
            )
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but {batch_size} images are requested: "
                "pass one generator per image (`batch_size`) or a single generator."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, but is {output_type!r}.")
        unknown_inputs = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown_inputs:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` contains {unknown_inputs}; allowed are "
                f"{self._callback_tensor_inputs}."
            )

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

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's images in [-1, 1] of scaled latents, as Stable Diffusion scales them:
        `latents = (vae.encode(x).latent_dist.sample() - shift_factor) * scaling_factor`."""
        shift_factor = getattr(self.vae.config, "shift_factor", None) or 0.0
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor + shift_factor
        return self.vae.decode(latents).sample

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
    def num_timesteps(self):
        return self._num_timesteps

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        num_inference_steps: Optional[int] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["UnconditionalImagePipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        latents: Optional[torch.Tensor] = None,
        num_images_per_prompt: Optional[int] = None,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""
        Generate images from noise.

        Args:
            batch_size (`int`, *optional*, defaults to 1):
                The number of images to generate.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Generator(s) that make generation deterministic; a list gives one generator per image.
            num_inference_steps (`int`, *optional*, defaults to `pipe.config.num_inference_steps` or 1000):
                A distilled student saves its own few steps; otherwise:
                The number of denoising steps. The default is `DDPMPipeline`'s, so that the two pipelines give the
                same images for the same call. The class and text pipelines default to 20, which
                benchmarks/bench_sampling.py measured for guided models; for unconditional models that figure has
                not been measured, so 1000 stays the safe choice with DDPM (DDIM or DPM-Solver: 20-50).
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
                `model_output` (the prediction of the step) and `pred_original_sample` (the clean image that
                prediction implies, in [-1, 1] before clipping; `pipelines.DenoisingFilm` records it).
            latents (`torch.Tensor`, *optional*):
                The starting noise, of shape `(batch_size, in_channels, sample_size, sample_size)`, instead of noise
                drawn from `generator`: diffusers' way to reproduce one sample or vary it.
            num_images_per_prompt (`int`, *optional*):
                diffusers' name for `batch_size`; when given, it is used.

        Examples:

        ```py
        >>> import torch
        >>> from diffusers import DDPMScheduler, UNet2DModel
        >>> from diffkit import UnconditionalImagePipeline

        >>> unet = UNet2DModel(
        ...     sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
        ...     down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        ... )
        >>> pipe = UnconditionalImagePipeline(unet=unet, scheduler=DDPMScheduler())
        >>> images = pipe(batch_size=2, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images
        >>> images[0].size
        (8, 8)

        ```

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the generated images, as `.images` or as the tuple's first
            element.
        """
        if num_inference_steps is None:
            num_inference_steps = self.config.num_inference_steps or DEFAULT_NUM_INFERENCE_STEPS
        if num_images_per_prompt is not None:
            batch_size = num_images_per_prompt
        # 0. Check inputs. Raise an error if not correct
        self.check_inputs(batch_size, num_inference_steps, generator, output_type, callback_on_step_end_tensor_inputs)

        # 1. Sample gaussian noise to begin the loop (before the timesteps are set, as DDPMPipeline does)
        device = self._execution_device
        latents = self.prepare_latents(batch_size, self.unet.dtype, device, generator, latents)

        # 2. Set the timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator)

        # 3. Denoising loop
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            # predict the model output (noise, sample or velocity, as the scheduler was trained)
            model_input = self.scheduler.scale_model_input(latents, t)
            model_output = self.unet(model_input, t).sample

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

        # 4. Decode the latents (a latent model), and post-process from [-1, 1] to [0, 1]
        # Copied from pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.__call__
        # lines "if self.vae is not None and output_type" to "return ImagePipelineOutput(images=image)"
        if self.vae is not None and output_type != "latent":
            latents = self.decode_latents(latents)
        image = self.postprocess_image(latents, output_type)

        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)
        return ImagePipelineOutput(images=image)
