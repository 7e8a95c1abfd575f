"""`DenoisingFilm` and the `pred_original_sample` callback input it records."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler
from PIL import Image

from diffkit import DenoisingFilm, UnconditionalImagePipeline

from .test_pipelines import STEPS, make_class_pipeline


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_predicted_clean_image_matches_the_schedulers_own(tiny_condition_unet, prediction_type):
    # DDPM returns its x_0 estimate; the pipeline's formula, used for schedulers that do not, must agree with it
    scheduler = DDPMScheduler(num_train_timesteps=100, prediction_type=prediction_type, clip_sample=False)
    pipe = make_class_pipeline(tiny_condition_unet, scheduler)
    scheduler.set_timesteps(STEPS)
    generator = torch.Generator().manual_seed(0)
    sample, model_output = torch.randn(2, 1, 8, 8, generator=generator), torch.randn(2, 1, 8, 8, generator=generator)
    for t in scheduler.timesteps:
        expected = scheduler.step(model_output, t, sample).pred_original_sample
        torch.testing.assert_close(pipe.predict_original_sample(model_output, t, sample), expected)


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler])
def test_the_film_records_every_step_and_changes_nothing(tiny_condition_unet, scheduler_class):
    pipe = make_class_pipeline(tiny_condition_unet, scheduler_class(num_train_timesteps=100))
    kwargs = dict(class_labels=[0, 1, 2], num_inference_steps=STEPS, output_type="pt")
    plain = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    film = DenoisingFilm(frame_scale=2)
    filmed = pipe(
        **kwargs,
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=film,
        callback_on_step_end_tensor_inputs=film.tensor_inputs,
    ).images
    torch.testing.assert_close(filmed, plain, rtol=0, atol=0)
    assert len(film.frames) == STEPS and film.timesteps == pipe.scheduler.timesteps.tolist()
    assert film.frames[0].shape == (3, 1, 8, 8) and 0 <= film.frames[0].min() <= film.frames[0].max() <= 1
    # the estimates move: the first and the last differ
    assert not torch.equal(film.frames[0], film.frames[-1])


@pytest.mark.parametrize("scheduler_class", [DDPMScheduler, DPMSolverMultistepScheduler])
def test_the_unconditional_pipeline_films_too(tiny_unet2d, scheduler_class):
    pipe = UnconditionalImagePipeline(tiny_unet2d, scheduler_class(num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(batch_size=2, num_inference_steps=STEPS, output_type="pt")
    plain = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    film = DenoisingFilm()
    filmed = pipe(
        **kwargs,
        generator=torch.Generator().manual_seed(0),
        callback_on_step_end=film,
        callback_on_step_end_tensor_inputs=film.tensor_inputs,
    ).images
    torch.testing.assert_close(filmed, plain, rtol=0, atol=0)
    assert len(film.frames) == STEPS and film.frames[0].shape == (2, 1, 8, 8)
    # the last estimate of DDPM is the image itself (its last step returns x_0)
    if scheduler_class is DDPMScheduler:
        torch.testing.assert_close(film.frames[-1], plain)
    with pytest.raises(ValueError, match="allowed are"):
        pipe(**kwargs, callback_on_step_end=film, callback_on_step_end_tensor_inputs=["noise"])


def test_strip_and_gif_files(tiny_condition_unet, tmp_path):
    pipe = make_class_pipeline(tiny_condition_unet, DDPMScheduler(num_train_timesteps=100))
    film = DenoisingFilm(frame_scale=3)
    pipe(
        class_labels=[0, 1],
        num_inference_steps=5,
        callback_on_step_end=film,
        callback_on_step_end_tensor_inputs=film.tensor_inputs,
    )
    strip = Image.open(film.save(str(tmp_path / "film.png")))
    assert strip.size == (5 * 8 * 3, 2 * 8 * 3)  # one column per step, one row per image
    # three evenly spaced frames: steps 0, 2 and 4; the last column is the last step's estimate
    three = np.asarray(film.strip(num_frames=3))
    assert three.shape == (2 * 8 * 3, 3 * 8 * 3)
    last = (film.frames[-1][1, 0].numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(three[8 * 3 :: 3, 2 * 8 * 3 :: 3], last)
    gif = Image.open(film.save(str(tmp_path / "film.gif")))
    assert gif.n_frames == 5 and gif.size == (2 * 8 * 3, 8 * 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["film.gif", "film.png"]  # no partial files left


def test_film_errors_say_what_to_do(tiny_condition_unet, tmp_path):
    pipe = make_class_pipeline(tiny_condition_unet, DDPMScheduler(num_train_timesteps=100))
    film = DenoisingFilm()
    with pytest.raises(ValueError, match="The film is empty"):
        film.strip()
    with pytest.raises(ValueError, match="pass `callback_on_step_end_tensor_inputs=film.tensor_inputs`"):
        pipe(class_labels=[0], num_inference_steps=STEPS, callback_on_step_end=film)
    pipe(
        class_labels=[0],
        num_inference_steps=STEPS,
        callback_on_step_end=film,
        callback_on_step_end_tensor_inputs=film.tensor_inputs,
    )
    with pytest.raises(ValueError, match="must end in .gif .* or .png"):
        film.save(str(tmp_path / "film.mp4"))
    with pytest.raises(ValueError, match="`frame_scale` must be a positive integer"):
        DenoisingFilm(frame_scale=0)


def test_sigma_space_scheduler_estimates_come_from_the_scheduler(tiny_condition_unet):
    # Euler ancestral works on x = x_0 + sigma * eps, where the variance-preserving formula does not hold; it
    # returns its own estimate, which the film records
    pipe = make_class_pipeline(tiny_condition_unet, EulerAncestralDiscreteScheduler(num_train_timesteps=100))
    film = DenoisingFilm()
    pipe(
        class_labels=[0],
        num_inference_steps=STEPS,
        callback_on_step_end=film,
        callback_on_step_end_tensor_inputs=film.tensor_inputs,
    )
    assert len(film.frames) == STEPS
    with pytest.raises(ValueError, match="does not denoise in the variance-preserving form"):
        pipe.predict_original_sample(torch.zeros(1, 1, 8, 8), pipe.scheduler.timesteps[0], torch.zeros(1, 1, 8, 8))
