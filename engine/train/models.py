"""Our CIFAR-style models, registered into timm's own registry, and forward-FLOP measurement.

Importing this module makes `timm.create_model("cifar_resnet18", ...)` work; `build_model`
is the one door the engine uses for ours and any other timm name. No weights are shipped.
"""

import copy
from typing import Any

import timm
import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from engine.errors import BadInput

REGISTERED_MODELS: tuple[str, ...] = (
    "cifar_resnet18",
    "cifar_preact_resnet18",
    "cifar_wrn_28_10",
    "small_cnn",
    "cifar_small_cnn",
    "strided_cnn",
)

# What timm.create_model hands every entrypoint besides the model's own arguments.
_FACTORY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _init_conv(conv: nn.Conv2d) -> None:
    # The same He init torchvision and timm give ResNets, so ours train like theirs.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")


def _model_kwargs(name: str, pretrained: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Refuse pretrained weights and drop timm's factory kwargs, keeping the model's own."""
    if pretrained:
        raise BadInput(
            f"{name} has no pretrained weights: budget-tui ships none and downloads nothing; "
            "build it with pretrained=False"
        )
    return {key: value for key, value in kwargs.items() if key not in _FACTORY_KWARGS}


class CifarResNet(ResNet):
    """timm's ResNet with a CIFAR stem: one 3x3 stride-1 conv and no max-pool, so 32 px inputs
    keep full resolution into the first stage (the paper's ResNet-18)."""

    def __init__(
        self, layers: tuple[int, ...], in_chans: int = 3, zero_init_last: bool = False, **kwargs: Any
    ):
        # zero_init_last defaults off: the reference CIFAR ResNet starts with live residual branches.
        super().__init__(BasicBlock, layers, in_chans=in_chans, zero_init_last=zero_init_last, **kwargs)
        stem_width = self.conv1.out_channels
        self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        _init_conv(self.conv1)
        self.maxpool = nn.Identity()
        # The ImageNet stem quartered the resolution and ours keeps it, so fix the feature taps.
        for info in self.feature_info:
            info["reduction"] = max(1, info["reduction"] // 4)


class ClassifierNet(nn.Module):
    """The timm-like head API our own nets share: global average pool, dropout, linear."""

    num_features: int
    num_classes: int
    head_drop_rate: float

    def _make_head(self, num_features: int, num_classes: int, head_drop_rate: float) -> None:
        self.num_features = num_features
        self.head_drop_rate = head_drop_rate
        self.reset_classifier(num_classes)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _init_conv(module)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new linear layer for num_classes; 0 leaves pooled features (timm's convention)."""
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        x = nn.functional.dropout(x, p=self.head_drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3, BN-ReLU-(dropout)-conv3x3, plus a shortcut (He et al. 2016, identity
    mappings). A block that changes shape projects its pre-activated input with a 1x1 conv."""

    def __init__(
        self, in_chans: int, out_chans: int, stride: int, preactivate: bool, drop_rate: float
    ):
        super().__init__()
        # The network's first block follows the stem's BN-ReLU, so it must not activate twice.
        self.preact: nn.Module = nn.Identity()
        if preactivate:
            self.preact = nn.Sequential(nn.BatchNorm2d(in_chans), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.act2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(drop_rate)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        changes_shape = stride != 1 or in_chans != out_chans
        self.shortcut = (
            nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False) if changes_shape else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.preact(x)
        shortcut = x if self.shortcut is None else self.shortcut(activated)
        out = self.conv2(self.dropout(self.act2(self.bn2(self.conv1(activated)))))
        return out + shortcut


class PreActResNet(ClassifierNet):
    """Pre-activation ResNet for small images: CIFAR stem (3x3 conv-BN-ReLU), stages of
    PreActBlocks (the first of each later stage strides 2), final BN-ReLU, pool, linear.
    Serves both the pre-act ResNet-18 and the Wide ResNet (dropout inside the blocks)."""

    def __init__(
        self,
        stem_width: int,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        num_classes: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,  # inside each block, between its convs (WRN's placement)
    ):
        super().__init__()
        self.in_chans = in_chans
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        blocks = []
        block_in = stem_width
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for index in range(depth):
                stride = 2 if stage > 0 and index == 0 else 1
                first = len(blocks) == 0
                blocks.append(PreActBlock(block_in, width, stride, not first, drop_rate))
                block_in = width
        self.blocks = nn.Sequential(*blocks)
        self.final_act = nn.Sequential(nn.BatchNorm2d(block_in), nn.ReLU(inplace=True))
        self._make_head(block_in, num_classes, head_drop_rate=0.0)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_act(self.blocks(self.stem(x)))


class SmallCNN(ClassifierNet):
    """Three 3x3 conv-BN-ReLU layers with one 2x2 max-pool: a sub-millisecond net for 8x8 grey
    digits that still works at any input size and channel count (global average pool)."""

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: tuple[int, int, int] = (32, 64, 128),
        drop_rate: float = 0.0,  # before the classifier
        stem_stride: int = 1,  # 2 halves the resolution at once: cheap on 32x32 inputs
    ):
        super().__init__()
        self.in_chans = in_chans

        def conv_bn_relu(in_width: int, out_width: int, stride: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(in_width, out_width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out_width),
                nn.ReLU(inplace=True),
            ]

        self.features = nn.Sequential(
            *conv_bn_relu(in_chans, widths[0], stem_stride),
            *conv_bn_relu(widths[0], widths[1]),
            # ceil_mode keeps odd sizes (and 1x1 inputs) valid instead of shrinking them to zero.
            nn.MaxPool2d(2, ceil_mode=True),
            *conv_bn_relu(widths[1], widths[2]),
        )
        self._make_head(widths[2], num_classes, head_drop_rate=drop_rate)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class StridedCNN(ClassifierNet):
    """3x3 conv-BN-ReLU layers that each halve the resolution with stride 2, then a hidden
    linear-ReLU layer over the flattened feature map (pooled to a fixed grid, so it keeps
    where things are) and the classifier.

    Made for a CPU: a stride-1 conv or a max-pool at full resolution spends most of a
    step moving full-size activations through memory (measured at 28x28 on one thread: the
    max-pool and the batch norms took three quarters of a 2-conv net's step); strided convs
    never make them. The hidden layer costs a fifth more FLOPs and was worth a point of
    Fashion-MNIST test accuracy after 10 epochs (92.3% against 91.3%).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: tuple[int, ...] = (32, 64, 128),
        grid: int = 4,  # the head sees grid x grid positions: 28 px after three halvings is 4
        hidden_width: int = 256,
        drop_rate: float = 0.0,  # before the classifier
    ):
        super().__init__()
        self.in_chans = in_chans
        layers: list[nn.Module] = []
        for in_width, out_width in zip((in_chans, *widths), widths):
            layers += [
                nn.Conv2d(in_width, out_width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_width),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.grid = grid
        self.hidden = nn.Sequential(nn.Linear(widths[-1] * grid * grid, hidden_width), nn.ReLU(inplace=True))
        self._make_head(hidden_width, num_classes, head_drop_rate=drop_rate)
        self._init_weights()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if x.shape[-2:] != (self.grid, self.grid):  # the pool is slow even where it changes nothing
            x = nn.functional.adaptive_avg_pool2d(x, self.grid)
        x = self.hidden(x.flatten(1))
        x = nn.functional.dropout(x, p=self.head_drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)


@register_model
def cifar_resnet18(
    pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, **kwargs: Any
) -> nn.Module:
    """ResNet-18, CIFAR stem (docs/methods.md, Budget and schedule): about 11.17 M
    parameters, 0.556 GMAC at 32 px."""
    kwargs = _model_kwargs("cifar_resnet18", pretrained, kwargs)
    return CifarResNet((2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def cifar_preact_resnet18(
    pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, **kwargs: Any
) -> nn.Module:
    """Pre-activation ResNet-18, CIFAR stem, widths 64/128/256/512."""
    kwargs = _model_kwargs("cifar_preact_resnet18", pretrained, kwargs)
    return PreActResNet(
        64, (64, 128, 256, 512), (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model
def cifar_wrn_28_10(
    pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, **kwargs: Any
) -> nn.Module:
    """Wide ResNet 28-10 (Zagoruyko & Komodakis): 3 groups of 4 blocks, widths 160/320/640."""
    kwargs = _model_kwargs("cifar_wrn_28_10", pretrained, kwargs)
    return PreActResNet(
        16, (160, 320, 640), (4, 4, 4), num_classes=num_classes, in_chans=in_chans, **kwargs
    )


@register_model
def small_cnn(
    pretrained: bool = False, num_classes: int = 10, in_chans: int = 1, **kwargs: Any
) -> nn.Module:
    """Small fast CNN for 8x8 grey digits; any input size and channel count."""
    kwargs = _model_kwargs("small_cnn", pretrained, kwargs)
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, **kwargs)


@register_model
def cifar_small_cnn(
    pretrained: bool = False, num_classes: int = 10, in_chans: int = 3, **kwargs: Any
) -> nn.Module:
    """small_cnn for 32x32 colour images on a CPU: stride-2 stem, widths 16/32/64 (~5 MFLOP)."""
    kwargs = _model_kwargs("cifar_small_cnn", pretrained, kwargs)
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, widths=(16, 32, 64), stem_stride=2, **kwargs)


@register_model
def strided_cnn(
    pretrained: bool = False, num_classes: int = 10, in_chans: int = 1, **kwargs: Any
) -> nn.Module:
    """Fast CPU net for 28x28 grey images (Fashion-MNIST): three stride-2 convs, widths
    32/64/128, a 256-wide hidden layer over the 4x4 map, linear (~5.3 MFLOP at 28 px)."""
    kwargs = _model_kwargs("strided_cnn", pretrained, kwargs)
    return StridedCNN(num_classes=num_classes, in_chans=in_chans, **kwargs)


def build_model(name: str, num_classes: int, in_chans: int) -> torch.nn.Module:
    """timm.create_model for ours and any other timm name, never with pretrained weights."""
    if not timm.is_model(name):
        raise BadInput(
            f"unknown model {name!r}: ours are {', '.join(REGISTERED_MODELS)}; "
            "any timm model name works too (see timm.list_models())"
        )
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)


def forward_flops_per_sample(model: torch.nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs (2 x multiply-accumulates) of one sample's forward pass, input_shape = (C, H, W).

    Counted on an eval-mode CPU copy, so the caller's model (device, mode, BN running
    statistics) is untouched; a batch of 2 keeps batch-size special cases out of the count.
    """
    probe = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    batch = torch.zeros(2, *input_shape)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        probe(batch)
    return counter.get_total_flops() // 2
