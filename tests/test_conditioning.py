"""The conditioning classes of `training/conditioning.py`: one per `--conditioning` choice, each answering the same
questions, and the condition inputs each gives the UNet (with the dropout that guidance needs)."""

from types import SimpleNamespace

import torch

from diffkit.pipelines.pipeline_class_conditional_image import one_hot_label_states
from diffkit.training.conditioning import CONDITIONINGS, ClassConditioning, Unconditional
from diffkit.training.train import build_parser, build_unet

PROTOCOL = (
    "fit_unet_config",
    "model_inputs",
    "build_pipeline",
    "sample_grid",
    "eval_labels",
    "evaluation_images",
    "evaluation_extras",
    "describe",
    "data_config",
)


def test_every_conditioning_choice_has_a_class_with_the_whole_protocol():
    choices = next(a.choices for a in build_parser()._actions if a.dest == "conditioning")
    assert (
        list(choices)
        == list(CONDITIONINGS)
        == ["unconditional", "class_conditional", "text_conditional", "super_resolution"]
    )
    for name, mode in CONDITIONINGS.items():
        assert mode.name == name
        for method in PROTOCOL:
            assert callable(getattr(mode, method)), (name, method)


def test_class_conditioning_drops_labels_to_the_null_class_at_the_dropout_rate():
    args = SimpleNamespace(condition_dropout=0.25, guidance_scale=4.0)
    conditioning = ClassConditioning(args, num_classes=10, id2label={i: str(i) for i in range(10)})
    labels = torch.arange(10).repeat(1000)
    generator = torch.Generator().manual_seed(0)
    noisy_images = torch.zeros(len(labels), 1, 2, 2)
    sample, unet_kwargs = conditioning.model_inputs(noisy_images, {"labels": labels}, generator)
    assert sample is noisy_images
    states = unet_kwargs["encoder_hidden_states"]
    assert states.shape == (10000, 1, 11)
    ids = states[:, 0].argmax(-1)
    dropped = ids == 10
    assert abs(dropped.float().mean().item() - 0.25) < 0.02
    assert torch.equal(ids[~dropped], labels[~dropped])
    # the same generator state gives the same dropout: the training noise stream alone decides it
    _, again = conditioning.model_inputs(noisy_images, {"labels": labels}, torch.Generator().manual_seed(0))
    assert torch.equal(again["encoder_hidden_states"], one_hot_label_states(ids, 10, torch.float32))


def test_unconditional_and_class_unets_from_the_default_configs():
    args = SimpleNamespace(conditioning="none", model_config_name_or_path=None)
    unet = build_unet(args, Unconditional(args), num_channels=1, resolution=28)
    assert type(unet).__name__ == "UNet2DModel" and unet.config.sample_size == 28
    noisy_images = torch.zeros(2, 1, 28, 28)
    assert Unconditional(args).model_inputs(noisy_images, {}, None) == (noisy_images, {})
    args = SimpleNamespace(conditioning="class", model_config_name_or_path=None)
    unet = build_unet(args, ClassConditioning(args, 10, None), num_channels=3, resolution=32)
    assert type(unet).__name__ == "UNet2DConditionModel"
    assert unet.config.encoder_hid_dim == 11 and unet.config.in_channels == 3
