"""A denoising film: the clean image a pipeline predicts at every step, as an animated GIF or a strip of frames."""

import os
from typing import Dict, List, Optional

import numpy as np
import torch
from PIL import Image


class DenoisingFilm:
    r"""
    A `callback_on_step_end` that records the predicted clean image x_0 of every image at every denoising step.

    Early steps predict a blurry average, later ones settle the details: the film shows how an image forms. Pass the
    film as the callback and its `tensor_inputs` as `callback_on_step_end_tensor_inputs`; it changes nothing in the
    sampling (the images are identical with and without it).

    Args:
        frame_scale (`int`, *optional*, defaults to 4):
            Each pixel becomes a `frame_scale` x `frame_scale` block (nearest neighbour), so 28x28 digits stay visible.

    Example:

    ```py
    >>> import torch
    >>> from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    >>> from diffkit import ClassConditionalImagePipeline, DenoisingFilm

    >>> unet = UNet2DConditionModel(
    ...     sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), norm_num_groups=4,
    ...     down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    ...     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=8,
    ...     encoder_hid_dim=3, encoder_hid_dim_type="text_proj",
    ... )
    >>> pipe = ClassConditionalImagePipeline(unet, DPMSolverMultistepScheduler(), num_classes=2)
    >>> film = DenoisingFilm()
    >>> images = pipe(class_labels=[0, 1], num_inference_steps=4, callback_on_step_end=film,
    ...               callback_on_step_end_tensor_inputs=film.tensor_inputs).images
    >>> len(film.frames), film.strip().size  # 4 steps; one row per image, one column per step, 4x enlarged
    (4, (128, 64))
    >>> film.save("film.gif")
    'film.gif'

    ```
    """

    tensor_inputs = ["pred_original_sample"]

    def __init__(self, frame_scale: int = 4):
        if frame_scale < 1:
            raise ValueError(f"`frame_scale` must be a positive integer, but is {frame_scale}.")
        self.frame_scale = frame_scale
        self.frames: List[torch.Tensor] = []  # one (batch, channels, height, width) tensor in [0, 1] per step
        self.timesteps: List[int] = []

    def __call__(self, pipe, step_index: int, timestep, callback_kwargs: Dict) -> Dict:
        if "pred_original_sample" not in callback_kwargs:
            raise ValueError(
                "The film needs the predicted clean image: pass "
                "`callback_on_step_end_tensor_inputs=film.tensor_inputs` with `callback_on_step_end=film`."
            )
        prediction = callback_kwargs["pred_original_sample"]
        if getattr(pipe, "vae", None) is not None:
            # a latent model predicts clean latents: the film shows the images they decode to
            prediction = pipe.decode_latents(prediction)
        self.frames.append((prediction.detach().float().cpu() / 2 + 0.5).clamp(0, 1))
        self.timesteps.append(int(timestep))
        return {}  # nothing is changed

    def _tile(self, images: torch.Tensor, columns: int) -> Image.Image:
        """A grid image of `images` (N, C, H, W) in [0, 1], `columns` wide, enlarged by `frame_scale`."""
        count, channels, height, width = images.shape
        rows = -(-count // columns)
        padded = torch.ones(rows * columns, channels, height, width)
        padded[:count] = images
        grid = padded.view(rows, columns, channels, height, width).permute(0, 3, 1, 4, 2)
        grid = grid.reshape(rows * height, columns * width, channels)
        pixels = (grid.numpy() * 255).round().astype(np.uint8)
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        return image.resize((image.width * self.frame_scale, image.height * self.frame_scale), Image.NEAREST)

    def strip(self, num_frames: Optional[int] = None) -> Image.Image:
        """One row per image, one column per step (`num_frames` evenly spaced ones, the last included)."""
        if not self.frames:
            raise ValueError("The film is empty: run the pipeline with `callback_on_step_end=film` first.")
        steps = list(range(len(self.frames)))
        if num_frames is not None and num_frames < len(steps):
            steps = sorted({round(i * (len(steps) - 1) / max(num_frames - 1, 1)) for i in range(num_frames)})
        # (images, steps, C, H, W) -> a grid read row by row
        frames = torch.stack([self.frames[i] for i in steps], dim=1)
        return self._tile(frames.flatten(0, 1), columns=len(steps))

    def animation(self, columns: Optional[int] = None) -> List[Image.Image]:
        """One frame per step, each a grid of all the images (`columns` wide; by default as square as possible)."""
        if not self.frames:
            raise ValueError("The film is empty: run the pipeline with `callback_on_step_end=film` first.")
        columns = columns or int(np.ceil(np.sqrt(len(self.frames[0]))))
        return [self._tile(frame, columns) for frame in self.frames]

    def save(self, path: str, num_frames: Optional[int] = None, frame_duration_ms: int = 100) -> str:
        """Write an animated GIF (`.gif`, the last frame held for a second) or a strip (`.png`), atomically."""
        extension = os.path.splitext(path)[1].lower()
        partial = f"{path}.partial{extension}"
        if extension == ".gif":
            frames = self.animation()
            durations = [frame_duration_ms] * (len(frames) - 1) + [1000]
            frames[0].save(partial, save_all=True, append_images=frames[1:], duration=durations, loop=0)
        elif extension == ".png":
            self.strip(num_frames).save(partial)
        else:
            raise ValueError(f"`path` {path!r} must end in .gif (an animation) or .png (a strip of frames).")
        os.replace(partial, path)
        return path
