# Copyright 2026 The diffkit authors. Licensed under the Apache License, Version 2.0.
#
# This file depends only on torch and diffusers (with numpy and PIL, which diffusers needs) so that it can be
# uploaded next to the weights and loaded with `DiffusionPipeline.from_pretrained(repo_id, trust_remote_code=True)` by
# people who do not have diffkit installed.
"""Unconditional img2img (SDEdit) and denoising with any diffusers scheduler."""

import inspect
import json
import math
import os
import shutil
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


# The step count when neither the call nor the pipeline's config (a distilled student's) gives one.
DEFAULT_NUM_INFERENCE_STEPS = 20


class UnconditionalImg2ImgPipeline(DiffusionPipeline):
    r"""
    Pipeline for image-to-image (SDEdit) and denoising with an unconditional model, on the UNet and scheduler of an
    [`UnconditionalImagePipeline`].

    Made from a trained pipeline without copying weights: `UnconditionalImg2ImgPipeline.from_pipe(pipe)` shares its
    `unet` and `scheduler`. It saves, pushes and loads like the base pipeline, with this file beside the weights.

    Args:
        unet ([`~diffusers.UNet2DModel`]):
            The denoising model; its `sample_size` and `in_channels` fix the size and channels of the images.
        scheduler ([`~diffusers.SchedulerMixin`]):
            Any diffusers scheduler made from the training scheduler's config.
        vae ([`~diffusers.AutoencoderKL`], *optional*):
            For a latent diffusion model: the UNet then denoises the VAE's latents (`unet.config.sample_size` is the
            latent side), which the VAE decodes into images at the end, with the `scaling_factor` and `shift_factor`
            of its config. Without it the UNet denoises pixels.
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents", "model_output", "pred_original_sample"]

    # Copied from diffkit.pipelines.pipeline_unconditional_image.UnconditionalImagePipeline.__init__
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

    # Copied from diffkit.pipelines.pipeline_class_conditional_img2img.ClassConditionalImg2ImgPipeline.noise_to_signal
    def noise_to_signal(self, timestep) -> float:
        """`b / a` where the scheduler noises a clean image `x` to `a * x + b * noise` at `timestep`."""
        one, zero = torch.ones(1), torch.zeros(1)
        timestep = timestep.reshape(1)
        signal = self.scheduler.add_noise(one, zero, timestep).item()
        noise = self.scheduler.add_noise(zero, one, timestep).item()
        return noise / signal

    # Copied from diffkit.pipelines.pipeline_class_conditional_img2img.ClassConditionalImg2ImgPipeline.start_index
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

    def check_inputs(
        self,
        image,
        strength,
        noise_level,
        num_images_per_image,
        num_inference_steps,
        generator,
        output_type,
        callback_on_step_end_tensor_inputs,
    ) -> int:
        """Raise `ValueError` for arguments that cannot work; return the number of output images."""
        if image is None:
            raise ValueError("`image` is required: pass the image to edit or to denoise.")
        counts = {"num_images_per_image": num_images_per_image, "num_inference_steps": num_inference_steps}
        for name, value in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, but is {value!r}.")
        self.check_strength(strength, noise_level, num_inference_steps)
        batch_size = (len(image) if isinstance(image, (list, tuple)) else 1) * num_images_per_image
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but {batch_size} images are requested: pass "
                "one generator per image or a single generator."
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

    # Copied from diffkit.pipelines.pipeline_class_conditional_img2img.ClassConditionalImg2ImgPipeline.check_strength
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

    @property
    # Copied from diffkit.pipelines.pipeline_class_conditional_image.ClassConditionalImagePipeline.num_timesteps
    def num_timesteps(self):
        return self._num_timesteps

    @torch.no_grad()
    def __call__(
        self,
        image: Union[PIL.Image.Image, np.ndarray, torch.Tensor, List],
        strength: Optional[float] = None,
        noise_level: Optional[float] = None,
        num_images_per_image: int = 1,
        num_inference_steps: Optional[int] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["UnconditionalImg2ImgPipeline", int, int, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        num_images_per_prompt: Optional[int] = None,
    ) -> Union[ImagePipelineOutput, Tuple]:
        r"""
        Redraw `image` (img2img), or remove the Gaussian noise it carries (denoising).

        Args:
            image (`PIL.Image`, `np.ndarray`, `torch.Tensor` or a list of them):
                PIL, numpy (uint8, or float in [0, 1]) or torch (float in [0, 1]); resized to the model's size.
            strength (`float`, *optional*, defaults to 0.6 unless `noise_level` is given):
                How much of the schedule to run, in [0, 1]; 0 returns the image unchanged, 1 redraws it from noise.
            noise_level (`float`, *optional*):
                The standard deviation of the noise in `image` (images in [-1, 1]); denoising starts at the step of
                that noise level and adds no noise of its own. 0 returns the image unchanged.
            num_images_per_image (`int`, *optional*, defaults to 1):
                Results made for each image; the output lists them image by image.
            num_inference_steps (`int`, *optional*, defaults to `pipe.config.num_inference_steps` or 20):
                A distilled student saves its own few steps; otherwise:
                Steps of the whole schedule; `strength` or `noise_level` selects the last part of it.
            generator (`torch.Generator` or `List[torch.Generator]`, *optional*):
                Generator(s) that make the result deterministic; a list gives one generator per output image.
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
                diffusers' name for `num_images_per_image`; when given, it is used.

        Examples:

        ```py
        >>> import numpy as np
        >>> import torch
        >>> from diffkit import UnconditionalImagePipeline, UnconditionalImg2ImgPipeline

        >>> pipe = UnconditionalImagePipeline.from_pretrained("out-uncond/")
        >>> img2img = UnconditionalImg2ImgPipeline.from_pipe(pipe)  # shares the weights, loads nothing
        >>> generator = torch.Generator().manual_seed(0)
        >>> image = pipe(generator=generator, output_type="np").images  # (1, 28, 28, 1) in [0, 1]
        >>> noise_level = 0.2  # the noise's std in the pipeline's [-1, 1] range: half of it in [0, 1]
        >>> noisy_image = (image + np.random.default_rng(0).normal(0, noise_level / 2, image.shape)).clip(0, 1)
        >>> clean = img2img(image=noisy_image, noise_level=noise_level, generator=generator).images[0]
        >>> clean.size
        (28, 28)

        ```

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the edited or denoised images.
        """
        if num_inference_steps is None:
            num_inference_steps = self.config.num_inference_steps or DEFAULT_NUM_INFERENCE_STEPS
        if num_images_per_prompt is not None:
            num_images_per_image = num_images_per_prompt
        image = self.split_batch(image)
        # 0. Check inputs. Raise an error if not correct
        batch_size = self.check_inputs(
            image,
            strength,
            noise_level,
            num_images_per_image,
            num_inference_steps,
            generator,
            output_type,
            callback_on_step_end_tensor_inputs,
        )
        if strength is None and noise_level is None:
            strength = 0.6
        images = image if isinstance(image, (list, tuple)) else [image]
        original = torch.cat([self.prepare_image(x) for x in images])
        device = self._execution_device
        per_image = torch.arange(len(images)).repeat_interleave(num_images_per_image)
        original = original[per_image].to(device=device, dtype=self.unet.dtype)
        # Copied from pipelines.pipeline_class_conditional_img2img.ClassConditionalImg2ImgPipeline.__call__
        # lines "# a latent model edits the image's latents" to "original = self.encode_images"
        # a latent model edits the image's latents
        if self.vae is not None:
            original = self.encode_images(original)

        # 1. Prepare the timesteps: the part of the schedule that `strength` or `noise_level` selects
        # Copied from pipelines.pipeline_class_conditional_img2img.ClassConditionalImg2ImgPipeline.__call__
        # lines "self.scheduler.set_timesteps(num_inference_steps" to "self._num_timesteps = len(timesteps)"
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        if strength == 0 or noise_level == 0:
            timesteps = self.scheduler.timesteps[:0]
        else:
            start = self.start_index(strength, noise_level)
            timesteps = self.scheduler.timesteps[start:]
            if hasattr(self.scheduler, "set_begin_index"):
                self.scheduler.set_begin_index(start)
        self._num_timesteps = len(timesteps)

        # 2. The starting sample: the image noised to the first step (img2img), or the noisy image itself, scaled
        # to the scheduler's form of a sample at that step (denoising)
        # Copied from pipelines.pipeline_class_conditional_img2img.ClassConditionalImg2ImgPipeline.__call__
        # lines "if len(timesteps) == 0:" to "extra_step_kwargs = self.prepare_extra_step_kwargs(generator)"
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

        # 3. Denoising loop
        for i, t in enumerate(self.progress_bar(timesteps)):
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
