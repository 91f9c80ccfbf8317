"""The H-Net builder, the Rot-MNIST models and the model registry.

:class:`HNet` builds an H-Net for any input (stages, depth, orders, kernels, pooling or
strides, an invariant or a per-pixel head); :class:`HNetMNIST` is its Rot-MNIST
configuration and :class:`RegularCNN` the plain baseline. The models take raw images
``(B, C, H, W)`` with values in ``[0, 1]`` and return logits ``(B, n_classes)`` (or per
pixel); input scaling lives inside the model. They know nothing about data loaders or
files (see :mod:`hnets.checkpoint` for saving and loading).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .nn import (
    EvalBlur,
    HBatchNorm,
    HBlock,
    HConv2d,
    HNonLinearity,
    HSkip,
    HUpsample,
    invariant_readout,
    pixel_readout,
)

__all__ = [
    "HNet",
    "HNetMNIST",
    "RegularCNN",
    "build_model",
    "model_names",
    "default_hnet_options",
    "count_parameters",
    "upgrade_state_dict",
]

# Rot-MNIST pixel standard deviation (over all pixels of the training split). Inputs are
# divided by it but *not* mean-centred: a zero background keeps the square image border
# invisible to the filters, which matters for equivariance at angles other than 90 degrees.
_INPUT_STD = 0.3


def count_parameters(model: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _scaled(width: float, channels: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(max(1, round(c * width)) for c in channels)


def _stage_widths(channels: Sequence[int], n: int, model: str) -> tuple[int, ...]:
    """``channels`` as ``n`` positive ints (a list from a checkpoint's JSON is fine)."""
    values = tuple(channels)
    if len(values) != n or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in values
    ):
        raise ValueError(f"{model} channels must be {n} positive integers, got {list(values)}")
    return values


#: Positions of the blocks in ``features`` before pooling moved into the blocks (the
#: two ``HAvgPool2d`` stood at 2 and 5): checkpoints written then load through this.
_OLD_FEATURE_INDEX = {"0": "0", "1": "1", "3": "2", "4": "3", "6": "4", "7": "5"}


def _renumber_old_features(state_dict: dict[str, Any], prefix: str = "") -> None:
    """Rename an old checkpoint's ``features.<i>`` keys in place (nothing for new ones)."""
    head = prefix + "features."
    if not any(key.startswith(head + "7.") for key in state_dict):
        return
    moved = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(head)]}
    for key, value in moved.items():  # all popped first: old and new indices overlap
        index, rest = key[len(head) :].split(".", 1)
        state_dict[f"{head}{_OLD_FEATURE_INDEX[index]}.{rest}"] = value


def _renumber_hook(_module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    _renumber_old_features(state_dict, prefix)


def upgrade_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` with the keys ``model`` has today, for weights saved by older hnets.

    ``model.load_state_dict`` does this itself; it is here for checks made before loading.
    """
    state = dict(state_dict)
    if isinstance(model, HNetMNIST):
        _renumber_old_features(state)
    return state


def _per_stage(value: int | Sequence[int], n: int, name: str, minimum: int = 1) -> tuple[int, ...]:
    """``value`` for each of ``n`` stages (one int for all, or ``n`` ints)."""
    values = (
        (value,) * n if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    )
    if len(values) != n or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        raise ValueError(
            f"HNet {name} must be an int >= {minimum} or {n} of them (one per stage); got {value!r}"
        )
    return values


_BATCH_NORM = ("last", "all", "none")
_HEADS = ("invariant", "dense")


class _DecoderLevel(nn.Module):
    """One level of the dense decoder: upsample to the skip's size, join it, one block."""

    def __init__(self, block: HBlock, skip: str) -> None:
        super().__init__()
        self.up = HUpsample(2)
        self.join = HSkip(skip)
        self.block = block

    def forward(self, z: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(z, [skip.shape[-2], skip.shape[-1]])
        return self.block(self.join(up, skip))


def _check_choices(n: int, batch_norm: str, head: str, skip: str) -> None:
    """HNet's string options and stage count, checked with one clear message each."""
    if n < 1:
        raise ValueError("HNet needs at least one stage (channels)")
    if batch_norm not in _BATCH_NORM:
        raise ValueError(
            f"HNet batch_norm must be one of {', '.join(_BATCH_NORM)}; got {batch_norm!r}"
        )
    if head not in _HEADS:
        raise ValueError(f"HNet head must be one of {', '.join(_HEADS)}; got {head!r}")
    if skip not in ("concat", "add"):
        raise ValueError(f"HNet skip must be 'concat' or 'add'; got {skip!r}")


def _encoder(
    in_channels: int,
    stages: Sequence[tuple[int, int, int, int, int]],
    max_order: int,
    n_rings: int | None,
    batch_norm: str,
) -> tuple[list[HBlock], list[int]]:
    """The blocks of the stages ``(width, depth, kernel, pool, stride)`` and the index of
    each stage's last block: the stride on a stage's first block, the pool (and, with
    ``batch_norm="last"``, the batch norm) on its last."""
    blocks: list[HBlock] = []
    stage_ends: list[int] = []
    cin, in_order = in_channels, 0
    for width, depth, kernel, pool, stride in stages:
        for j in range(depth):
            last = j == depth - 1
            conv = HConv2d(cin, width, kernel, max_order=max_order, in_max_order=in_order,
                           n_rings=n_rings, stride=stride if j == 0 else 1)  # fmt: skip
            norm = batch_norm == "all" or (batch_norm == "last" and last)
            bn = HBatchNorm(width, max_order) if norm else None
            act = HNonLinearity(width, max_order, inplace=True)
            blocks.append(HBlock(conv, act, bn, pool=pool if last else 1))
            cin, in_order = width, max_order
        stage_ends.append(len(blocks) - 1)
    return blocks, stage_ends


def _decoder(
    widths: Sequence[int],
    kernels: Sequence[int],
    max_order: int,
    n_rings: int | None,
    batch_norm: str,
    skip: str,
) -> list[_DecoderLevel]:
    """The dense head's levels, deepest first: each joins the level below's upsampled
    maps with the encoder stage of its size and runs one block at that stage's width."""
    levels: list[_DecoderLevel] = []
    c = widths[-1]
    for s in range(len(widths) - 2, -1, -1):
        if skip == "add" and c != widths[s]:
            raise ValueError(
                f"HNet skip='add' needs equal widths in neighbouring stages; got {list(widths)}"
            )
        joined = c + widths[s] if skip == "concat" else widths[s]
        conv = HConv2d(joined, widths[s], kernels[s], max_order=max_order, n_rings=n_rings)
        act = HNonLinearity(widths[s], max_order, inplace=True)
        bn = HBatchNorm(widths[s], max_order) if batch_norm != "none" else None
        levels.append(_DecoderLevel(HBlock(conv, act, bn), skip))
        c = widths[s]
    return levels


class HNet(nn.Module):
    r"""A Harmonic Network for any input: stages of :class:`~hnets.nn.HBlock`, then a read-out.

    Stage ``s`` has ``depth[s]`` blocks ``HConv2d -> [HBatchNorm] -> HNonLinearity`` with
    ``channels[s] * width`` channels, rotation orders ``0..max_order`` and
    ``kernel_size[s]`` filters; its first convolution has stride ``stride[s]`` and its last
    block ends with ``pool[s] x pool[s]`` mean pooling. ``batch_norm`` puts the magnitude
    batch norm on the ``"last"`` block of every stage (the H-Net of Worrall et al.), on
    ``"all"`` blocks or on ``"none"``. The blocks form one ``nn.Sequential`` ``features``
    (keys ``features.<i>.conv.weight`` ...), so :class:`HNetMNIST` is the configuration
    ``channels=(8, 16, 32), depth=2, pool=(2, 2, 1), n_rings=4``.

    Heads:

    * ``"invariant"`` (classification): a last convolution to ``num_classes`` order-0
      channels, then :func:`~hnets.nn.invariant_readout`
      (:math:`s_k = \operatorname{mean}_x \sum_m |z_{k,m}(x)| + b_k`): logits ``(B, K)``
      invariant to quarter turns up to float round-off where the grid allows (below).
    * ``"dense"`` (per-pixel): a decoder climbs back through the stages: each level
      upsamples (:class:`~hnets.nn.HUpsample`, to the size of the stage output it joins),
      joins that stage's output (:class:`~hnets.nn.HSkip`, ``skip="concat"`` or
      ``"add"``) and runs one block; a last upsampling returns to the input size, then the
      last convolution and :func:`~hnets.nn.pixel_readout` give per-pixel scores
      ``(B, K, H, W)`` whose maps turn with the input.

    **Exact quarter turns.** Every layer commutes with ``torch.rot90`` when each
    resolution change keeps the grid centred: ``k x k`` pooling needs the map's side
    divisible by ``k`` (on 28: 28 -> 14 -> 7), a stride-2 convolution ("same" padding)
    needs an odd side (9 -> 5 -> 3). Otherwise the sampling grid shifts by a pixel under a
    rotation and equivariance holds only approximately. Other angles are equivariant up
    to discretisation (see :func:`hnets.check_equivariance`).

    Images are multiplied by ``input_scale`` (default ``1 / 0.3``, about the inverse
    standard deviation of MNIST-like images; nothing is subtracted, so a zero background
    stays zero) after the optional eval-mode blur ``eval_blur`` (:class:`~hnets.nn.EvalBlur`).

    Args:
        in_channels: image channels.
        num_classes: classes (outputs per image, or per pixel with ``head="dense"``).
        channels: base channels per stage (times ``width``); their number sets the stages.
        depth: blocks per stage (an int for all stages, or one per stage).
        width: channel multiplier.
        max_order: highest rotation order of every block.
        kernel_size: odd filter size (per stage or one for all).
        n_rings: rings of the radial profiles (default: from the kernel size).
        pool: mean pooling at the end of each stage (1: none). Default: 2 after every stage
            but the last (``"invariant"``), 2 after every stage but the first (``"dense"``,
            so that the first stage is at full resolution for its skip connection).
        stride: stride of each stage's first convolution (1: none).
        batch_norm: ``"last"``, ``"all"`` or ``"none"`` (see above).
        head: ``"invariant"`` or ``"dense"``.
        skip: ``"concat"`` or ``"add"``: how the dense decoder joins each stage's output.
        input_scale: factor on the images.
        eval_blur: Gaussian sigma (pixels) of the eval-mode input blur, 0 for none.

    Shape:
        ``(B, in_channels, H, W)`` -> ``(B, num_classes)`` (``"invariant"``) or
        ``(B, num_classes, H, W)`` (``"dense"``).
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (8, 16, 32),
        depth: int | Sequence[int] = 2,
        width: float = 1.0,
        max_order: int = 1,
        kernel_size: int | Sequence[int] = 5,
        n_rings: int | None = None,
        pool: int | Sequence[int] | None = None,
        stride: int | Sequence[int] = 1,
        batch_norm: str = "last",
        head: str = "invariant",
        skip: str = "concat",
        input_scale: float = 1.0 / _INPUT_STD,
        eval_blur: float = 0.0,
    ) -> None:
        super().__init__()
        n = len(tuple(channels))
        _check_choices(n, batch_norm, head, skip)
        if pool is None:
            pool = (2,) * (n - 1) + (1,) if head == "invariant" else (1,) + (2,) * (n - 1)
        widths = _scaled(width, _stage_widths(channels, n, "HNet"))
        depths = _per_stage(depth, n, "depth")
        kernels = _per_stage(kernel_size, n, "kernel_size")
        pools = _per_stage(pool, n, "pool")
        strides = _per_stage(stride, n, "stride")
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"HNet kernel sizes must be odd; got {list(kernels)}")
        self.head_kind = head
        self.eval_blur = EvalBlur(eval_blur)
        stages = list(zip(widths, depths, kernels, pools, strides, strict=True))
        blocks, stage_ends = _encoder(in_channels, stages, max_order, n_rings, batch_norm)
        self.features = nn.Sequential(*blocks)
        #: index in ``features`` of each stage's last block (the dense decoder's skips)
        self.stage_ends = stage_ends
        decoder = (
            _decoder(widths, kernels, max_order, n_rings, batch_norm, skip)
            if head == "dense"
            else []
        )
        self.decoder = nn.ModuleList(decoder)
        self.upsample = HUpsample(2)  # the dense head's last step, back to the input size
        self.head = HConv2d(
            widths[-1] if head == "invariant" else widths[0],
            num_classes,
            kernels[-1] if head == "invariant" else kernels[0],
            max_order=0,
            in_max_order=max_order,
            n_rings=n_rings,
        )
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.register_buffer("input_scale", torch.tensor(float(input_scale)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # real images go straight into the first HConv2d (same as lift(), half the work)
        z = self.eval_blur(x) * self.input_scale
        if self.head_kind == "invariant":
            return invariant_readout(self.head(self.features(z)), self.bias)
        outs: list[torch.Tensor] = []
        for i, block in enumerate(self.features):
            z = block(z)
            if i in self.stage_ends:
                outs.append(z)
        n = len(outs)
        for j, level in enumerate(self.decoder):
            z = level(z, outs[n - 2 - j])
        z = self.upsample(z, [x.shape[-2], x.shape[-1]])
        return pixel_readout(self.head(z), self.bias)


class HNetMNIST(HNet):
    """The Harmonic Network for Rot-MNIST of Worrall et al. (2017), "DeepMNIST".

    Seven ``k x k`` harmonic convolutions with 8, 8, 16, 16, 32, 32 and ``n_classes``
    channels (``channels`` = the three stages' widths, default ``(8, 16, 32)``, times
    ``width``), rotation orders ``0..max_order``; a magnitude
    nonlinearity after every layer but the last, preceded by magnitude batch norm on
    the even layers (the official code's "batch norm with ReLU"); 2x2 mean pooling
    after blocks one and two. The last layer has rotation order 0 only; the
    read-out sums its magnitudes over orders, averages them over space and adds a
    bias per class. Magnitudes are rotation invariant, so the logits are invariant
    to 90-degree rotations of the input up to float round-off.

    It is the :class:`HNet` ``HNet(channels=channels, depth=2, pool=(2, 2, 1),
    n_rings=4, batch_norm="last")``, with the same parameters and state-dict keys.

    ``features`` is six :class:`~hnets.nn.HBlock` (the second and fourth end with the
    pools), which run their layers fused; ``hnets.nn.unfuse(model)`` runs every layer
    on its own (for hooks on them) with the same values. The forward feeds the scaled
    images straight into the first convolution (what :func:`hnets.lift` would give, at
    half the cost).

    Where the channels go sets the cost more than the parameter count does: the first
    stage runs at 28x28, the second at 14x14 and the third at 7x7, so a channel added
    to the first stage costs about 4x and 16x the arithmetic of one added to the later
    stages, for fewer parameters (``benchmarks/channel_layouts.py`` measures it).

    ``eval_blur`` (pixels, default 0: off) smooths the input by a Gaussian in eval mode
    only (:class:`~hnets.nn.EvalBlur`: training images are resampled, crisp inputs are
    not); the recipe sets 0.5 when it trains with rotation augmentation.

    Shape:
        ``(B, 1, 28, 28)`` in ``[0, 1]`` -> logits ``(B, n_classes)``.
    """

    def __init__(
        self,
        *,
        n_classes: int = 10,
        width: float = 1.0,
        max_order: int = 1,
        kernel_size: int = 5,
        n_rings: int | None = 4,
        in_channels: int = 1,
        channels: Sequence[int] = (8, 16, 32),
        eval_blur: float = 0.0,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            num_classes=n_classes,
            channels=_stage_widths(channels, 3, "HNetMNIST"),
            depth=2,
            width=width,
            max_order=max_order,
            kernel_size=kernel_size,
            n_rings=n_rings,
            pool=(2, 2, 1),
            batch_norm="last",
            eval_blur=eval_blur,
        )
        self.register_load_state_dict_pre_hook(_renumber_hook)


class RegularCNN(nn.Module):
    """A plain CNN baseline: six 3x3 conv-BN-ReLU layers, two max-pools, global average pooling.

    Channels ``(12, 12, 24, 24, 30, 30)`` times ``width`` give about the parameter
    count of :class:`HNetMNIST`'s default. Same input convention as the H-Net, and the
    same ``eval_blur``.

    Shape:
        ``(B, 1, 28, 28)`` in ``[0, 1]`` -> logits ``(B, n_classes)``.
    """

    def __init__(
        self,
        *,
        n_classes: int = 10,
        width: float = 1.0,
        in_channels: int = 1,
        channels: tuple[int, ...] = (12, 12, 24, 24, 30, 30),
        eval_blur: float = 0.0,
    ) -> None:
        super().__init__()
        self.eval_blur = EvalBlur(eval_blur)
        chans = _scaled(width, _stage_widths(channels, 6, "RegularCNN"))
        layers: list[nn.Module] = []
        cin = in_channels
        for i, cout in enumerate(chans):
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
            if i in (1, 3):
                layers.append(nn.MaxPool2d(2))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, n_classes)
        self.register_buffer("input_scale", torch.tensor(1.0 / _INPUT_STD), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.eval_blur(x) * self.input_scale)
        return self.classifier(h.mean(dim=(-2, -1)))


_MNIST_OPTIONS = frozenset(inspect.signature(HNetMNIST).parameters)


def _build_hnet(**options: Any) -> HNet:
    """``"hnet"``: :class:`HNetMNIST` for its own options, else an :class:`HNet`.

    Any :class:`HNet` option that :class:`HNetMNIST` lacks (``depth``, ``pool``, ``head``...)
    builds the general :class:`HNet`; ``n_classes`` is read as ``num_classes`` there, so
    the options the training code passes work for both.
    """
    if set(options) <= _MNIST_OPTIONS:
        return HNetMNIST(**options)
    if "n_classes" in options:
        options["num_classes"] = options.pop("n_classes")
    return HNet(**options)


def default_hnet_options(height: int, width: int) -> dict[str, Any]:
    """The ``"hnet"`` options for images of ``height x width`` pixels (``{}``: :class:`HNetMNIST`).

    Up to 32 pixels a side the three stages of :class:`HNetMNIST` (28 -> 14 -> 7) see the
    whole image. Larger images get one more stage of 2x2 pooling per doubling of the
    side, until the last stage runs at 12 pixels or less, with the channels doubling per
    stage from 8 (96 x 96: stages at 96, 48, 24 and 12 pixels, 8, 16, 32 and 64
    channels), so the receptive field covers the image. Every stage has two blocks but
    the first, at full resolution, which has one: it would otherwise cost as much
    arithmetic as all the others together (each stage costs about half the one before).
    Pooling by 2 keeps quarter turns exact on sides divisible by ``2 ** (stages - 1)``
    (96 is).
    """
    side = max(height, width)
    if side <= 32:
        return {}
    stages = 3
    while side / 2 ** (stages - 1) > 12:
        stages += 1
    return {
        "channels": [8 * 2**s for s in range(stages)],
        "depth": [1] + [2] * (stages - 1),
        "pool": [2] * (stages - 1) + [1],
    }


_REGISTRY: dict[str, Callable[..., nn.Module]] = {"hnet": _build_hnet, "cnn": RegularCNN}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(_REGISTRY)


def build_model(name: str, **options: Any) -> nn.Module:
    """Build a model by name (``"hnet"`` or ``"cnn"``) with options (``width``, ``max_order``, ...).

    ``"hnet"`` is :class:`HNetMNIST` for that class's options and the general :class:`HNet`
    as soon as an option only the latter has is given (``depth``, ``pool``, ``head``...).

    The returned module carries ``model.hnets_config = {"name": ..., "options": ...}``,
    everything :func:`hnets.load_model` needs to rebuild it.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    try:
        model = _REGISTRY[name](**options)
    except TypeError as exc:
        raise ValueError(f"bad options for model {name!r}: {exc}") from None
    model.hnets_config = {"name": name, "options": dict(options)}
    return model
