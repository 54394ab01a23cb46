"""Tests for engine.train.models: every registered model builds through timm and trains a step,
the paper's ResNet-18 has the reference architecture and cost, and FLOP counting is side-effect free."""

import pytest
import timm
import torch

from engine.errors import BadInput
from engine.train.models import REGISTERED_MODELS, build_model, forward_flops_per_sample

NUM_CLASSES = 7


def _model_and_input_cases() -> list[object]:
    # small_cnn is made for 8x8 grey digits and strided_cnn for 28x28 grey images, but every
    # model must also take CIFAR-shaped input; at 64 px strided_cnn pools its map to its grid.
    cases = [(name, (3, 32, 32)) for name in REGISTERED_MODELS] + [
        ("small_cnn", (1, 8, 8)),
        ("strided_cnn", (1, 28, 28)),
        ("strided_cnn", (1, 64, 64)),
    ]
    return [pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}") for name, shape in cases]


@pytest.mark.parametrize(("name", "input_shape"), _model_and_input_cases())
def test_registered_model_builds_forwards_and_trains_one_step(
    name: str, input_shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES, in_chans=input_shape[0])
    assert model.num_classes == NUM_CLASSES
    images = torch.randn(2, *input_shape)
    labels = torch.tensor([0, NUM_CLASSES - 1])
    before = [parameter.detach().clone() for parameter in model.parameters()]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    logits = model(images)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()

    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(loss)
    assert any(not torch.equal(old, new) for old, new in zip(before, model.parameters()))


def test_cifar_resnet18_matches_spec_architecture() -> None:
    model = timm.create_model("cifar_resnet18", num_classes=10)
    assert sum(parameter.numel() for parameter in model.parameters()) == pytest.approx(11_173_962, rel=0.01)
    assert model.conv1.kernel_size == (3, 3)
    assert model.conv1.stride == (1, 1)
    assert not any(isinstance(module, torch.nn.MaxPool2d) for module in model.modules())
    stem_out = model.maxpool(model.act1(model.bn1(model.conv1(torch.randn(2, 3, 32, 32)))))
    assert stem_out.shape[-2:] == (32, 32)
    assert forward_flops_per_sample(model, (3, 32, 32)) == pytest.approx(2 * 0.556e9, rel=0.02)


def test_strided_cnn_halves_28_px_three_times_and_costs_what_its_layers_say() -> None:
    model = timm.create_model("strided_cnn", num_classes=10)
    assert model.forward_features(torch.randn(2, 1, 28, 28)).shape == (2, 128, 4, 4)
    assert not any(isinstance(module, torch.nn.MaxPool2d) for module in model.modules())
    # Multiply-accumulates: output positions x output channels x (3 x 3 x input channels),
    # then the hidden layer over the flattened 4x4x128 map and the classifier.
    convolutions = 14 * 14 * 32 * 9 * 1 + 7 * 7 * 64 * 9 * 32 + 4 * 4 * 128 * 9 * 64
    linear = 4 * 4 * 128 * 256 + 256 * 10
    assert forward_flops_per_sample(model, (1, 28, 28)) == 2 * (convolutions + linear)
    assert model.num_features == 256 and model.forward_head(torch.randn(2, 128, 4, 4), pre_logits=True).shape == (2, 256)


@pytest.mark.parametrize("training", [True, False])
def test_flop_count_leaves_model_state_unchanged(training: bool) -> None:
    model = timm.create_model("small_cnn", num_classes=NUM_CLASSES, in_chans=1)
    model.train()
    model(torch.randn(4, 1, 8, 8))  # move the running stats off their initial values
    model.train(training)
    state_before = {key: value.clone() for key, value in model.state_dict().items()}

    flops = forward_flops_per_sample(model, (1, 8, 8))

    assert flops > 0
    assert model.training is training
    assert all(module.training is training for module in model.modules())
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key]), key


def test_build_model_rejects_unknown_name_and_lists_choices() -> None:
    with pytest.raises(BadInput) as raised:
        build_model("no_such_model", num_classes=10, in_chans=3)
    message = str(raised.value)
    assert all(name in message for name in REGISTERED_MODELS)
    assert "timm.list_models()" in message


@pytest.mark.parametrize("name", REGISTERED_MODELS)
def test_pretrained_weights_are_refused(name: str) -> None:
    with pytest.raises(BadInput, match="no pretrained weights"):
        timm.create_model(name, pretrained=True, num_classes=10)


def test_build_model_takes_any_timm_name() -> None:
    model = build_model("resnet10t", num_classes=NUM_CLASSES, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, NUM_CLASSES)
