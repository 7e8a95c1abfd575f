import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffkit.training.losses import min_snr_loss_weights, offset_noise, perturbed_input_noise

from .test_train import run_in_process, write_unet_config
from .utils import TINY_CONDITION_UNET_CONFIG


def test_min_snr_weights_on_a_hand_computed_case():
    # linear schedule: beta_0 = 1e-4, so alpha_bar_0 = 0.9999 and snr_0 = 0.9999 / 0.0001 = 9999
    timesteps = torch.tensor([0, 999])
    epsilon = DDPMScheduler(beta_schedule="linear", prediction_type="epsilon")
    v_prediction = DDPMScheduler(beta_schedule="linear", prediction_type="v_prediction")
    eps_weights = min_snr_loss_weights(epsilon, timesteps, snr_gamma=5.0)
    v_weights = min_snr_loss_weights(v_prediction, timesteps, snr_gamma=5.0)
    # (1 - alpha_bar_0 = 1e-4 is computed in float32 by diffusers, hence the relative tolerance of 1e-3)
    assert eps_weights[0].item() == pytest.approx(5 / 9999, rel=1e-3)  # min(9999, 5) / 9999
    assert v_weights[0].item() == pytest.approx(5 / 10000, rel=1e-3)  # min(9999, 5) / (9999 + 1)
    # at t = 999 the snr is far below gamma: the epsilon weight is min(snr, 5) / snr = 1
    assert eps_weights[1].item() == pytest.approx(1.0)
    snr_999 = np.prod(1 - np.linspace(1e-4, 0.02, 1000))
    snr_999 = snr_999 / (1 - snr_999)
    assert v_weights[1].item() == pytest.approx(snr_999 / (snr_999 + 1), rel=1e-4)


def test_noise_offset_adds_one_constant_per_image_and_channel():
    noise = torch.zeros(2, 3, 4, 4)
    shifted = offset_noise(noise, 0.1, torch.Generator().manual_seed(0))
    expected = 0.1 * torch.randn((2, 3, 1, 1), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, expected.expand(2, 3, 4, 4))


def test_input_perturbation_perturbs_the_input_noise_only():
    noise = torch.ones(2, 1, 4, 4)
    perturbed = perturbed_input_noise(noise, 0.1, torch.Generator().manual_seed(0))
    expected = 1 + 0.1 * torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(perturbed, expected)
    assert torch.equal(noise, torch.ones(2, 1, 4, 4))  # the target is untouched


def test_training_runs_with_every_loss_option(tmp_path):
    output_dir = tmp_path / "out"
    unet_config = write_unet_config(tmp_path, TINY_CONDITION_UNET_CONFIG, "unet.json")
    run_in_process(
        [
            "--max_train_samples",
            "16",
            "--train_batch_size",
            "8",
            "--max_train_steps",
            "2",
            "--resolution",
            "16",
            "--snr_gamma",
            "5",
            "--noise_offset",
            "0.1",
            "--input_perturbation",
            "0.1",
            "--prediction_type",
            "v_prediction",
            "--num_inference_steps",
            "1",
            "--num_samples_per_class",
            "1",
            "--model_config_name_or_path",
            unet_config,
            "--output_dir",
            str(output_dir),
        ]
    )
    config = json.loads((output_dir / "training_config.json").read_text())
    assert config["args"]["snr_gamma"] == 5.0 and np.isfinite(config["run"]["final_loss"])


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--snr_gamma", "0", "`--snr_gamma` must be a positive number, but is 0.0"),
        ("--noise_offset", "-0.1", "`--noise_offset` must be a finite number >= 0, but is -0.1"),
        ("--input_perturbation", "nan", "`--input_perturbation` must be a finite number >= 0, but is nan"),
    ],
)
def test_bad_loss_options_are_rejected(tmp_path, flag, value, message):
    from diffkit.training.train import parse_args

    with pytest.raises(ValueError, match=message):
        parse_args(["--output_dir", str(tmp_path), flag, value])
