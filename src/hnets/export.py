"""Export models built from hnets layers to plain PyTorch (no ``hnets`` needed) and to ONNX.

:func:`export` walks *any* module tree (``nn.Sequential``, ``nn.ModuleList``/``ModuleDict``,
your own classes, ordinary torch layers among the hnets ones) and replaces every hnets
layer by its plain-PyTorch form, registered per layer type in :data:`PLAIN_FORMS`:

* :class:`~hnets.nn.HConv2d` -> :class:`PlainHConv2d`, one ``nn.Conv2d`` holding the
  synthesised dense filter (:meth:`~hnets.nn.HConv2d.dense_weight`), between two
  reshapes; a first layer (``in_max_order=0``) still takes real images ``(B, C, H, W)``,
  through the real-input half of the filter;
* an eval-mode :class:`~hnets.nn.HBatchNorm` is a fixed positive scale per stream: folded
  into the convolution before it (inside an :class:`~hnets.nn.HBlock`, or directly after
  an ``HConv2d`` in an ``nn.Sequential``), else :class:`StreamScale`;
* :class:`~hnets.nn.HNonLinearity` (ReLU) -> :class:`MagnitudeReLU`;
* :class:`~hnets.nn.HAvgPool2d` -> :class:`PlainAvgPool`; :class:`~hnets.nn.HBlock` ->
  an ``nn.Sequential`` of the above.

Every plain form takes and returns the same tensors as the layer it replaces (harmonic
maps ``(B, C, M, 2, H, W)``), so whatever surrounds it (``nn.Flatten``, ``nn.Linear``,
your ``forward``) is left as it is. The other modules of ``hnets.nn``
(:class:`~hnets.nn.HUpsample`, :class:`~hnets.nn.HSkip`, :class:`~hnets.nn.Lift`,
:class:`~hnets.nn.Magnitude`, the read-outs, :class:`~hnets.nn.EvalBlur`) are plain
PyTorch already and are kept.

A ``forward`` that calls hnets *functions* keeps calling them: :func:`~hnets.lift`,
:func:`~hnets.magnitude` and :func:`~hnets.nn.invariant_readout` are torch operations
that trace (``torch.export``, ONNX) but are not all scriptable; for TorchScript use
their module forms (:class:`~hnets.nn.Lift`, :class:`~hnets.nn.Magnitude`,
:class:`~hnets.nn.InvariantReadout`). :class:`~hnets.models.HNet` and
:class:`~hnets.models.HNetMNIST` call only scriptable code and export like any model.

The result is in eval mode, scriptable (``torch.jit.script``) where its own classes'
``forward`` are, traceable by ``torch.export`` and exportable to ONNX.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import HNetsError
from .nn import HAvgPool2d, HBatchNorm, HBlock, HConv2d, HNonLinearity
from .nn.fused_relu import relu_pairs

__all__ = [
    "export",
    "export_onnx",
    "export_checkpoint",
    "plain_form",
    "PLAIN_FORMS",
    "PlainHConv2d",
    "MagnitudeReLU",
    "StreamScale",
    "PlainAvgPool",
]


class PlainHConv2d(nn.Module):
    """A harmonic convolution as one ``nn.Conv2d`` on the flattened maps.

    ``conv`` works on ``(B, C * M * 2, H, W)`` (channel index ``(c * M + m) * 2 + part``);
    the module reshapes around it. With ``real_input`` it also takes real images
    ``(B, C, H, W)``, convolved with the real-input columns of the filter only.

    Shape:
        ``(B, C_in, M_in, 2, H, W)`` (or ``(B, C_in, H, W)``) ->
        ``(B, C_out, M_out, 2, H_out, W_out)``.
    """

    def __init__(
        self, conv: nn.Conv2d, out_channels: int, out_orders: int, real_input: bool
    ) -> None:
        super().__init__()
        self.conv = conv
        self.out_channels = out_channels
        self.out_orders = out_orders
        self.real_input = real_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and self.real_input:  # real images: imaginary input parts are zero
            y = F.conv2d(
                x, self.conv.weight[:, 0::2], self.conv.bias, self.conv.stride, self.conv.padding
            )
        else:
            y = self.conv(x.flatten(1, 3))
        return y.unflatten(1, (self.out_channels, self.out_orders, 2))


class MagnitudeReLU(nn.Module):
    """``z * relu(|z|_eps + b) / |z|_eps`` per stream (the :class:`~hnets.nn.HNonLinearity`).

    ``bias`` has one entry per (channel, order) stream, shape ``(C, M)``.

    Shape:
        ``(B, C, M, 2, H, W)`` -> same shape.
    """

    def __init__(self, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("bias", bias.detach().clone())
        self.eps = eps

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pairs = z.permute(0, 4, 5, 1, 2, 3)  # (B, H, W, C, M, 2)
        out = relu_pairs(pairs, self.bias, self.eps)  # the definition hnets layers run
        return out.permute(0, 3, 4, 5, 1, 2)


class StreamScale(nn.Module):
    """A fixed positive factor per stream (an eval-mode :class:`~hnets.nn.HBatchNorm`).

    Shape:
        ``(B, C, M, 2, H, W)`` -> same shape.
    """

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone().view(1, *scale.shape, 1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale


class PlainAvgPool(nn.Module):
    """Mean pooling of every real and imaginary map (the :class:`~hnets.nn.HAvgPool2d`).

    Shape:
        ``(B, C, M, 2, H, W)`` -> ``(B, C, M, 2, H_out, W_out)``.
    """

    def __init__(self, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(kernel_size, stride)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.pool(z.flatten(1, 3))
        return y.unflatten(1, (z.shape[1], z.shape[2], 2))


def _plain_conv(conv: HConv2d, scale: torch.Tensor | None = None) -> PlainHConv2d:
    """``conv`` (then an optional per-stream ``scale`` ``(C, M)``) as a :class:`PlainHConv2d`."""
    with torch.no_grad():
        weight = conv.dense_weight().detach()
        bias = None
        if conv.bias is not None:
            bias = torch.zeros(conv.out_channels, conv.max_order + 1, 2, dtype=weight.dtype)
            bias[:, 0] = conv.bias
            bias = bias.flatten()
        if scale is not None:
            per_row = scale.reshape(-1, 1).expand(-1, 2).reshape(-1)  # each stream's two parts
            weight = weight * per_row.view(-1, 1, 1, 1).to(weight.dtype)
            if bias is not None:
                bias = bias * per_row
        plain = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=bias is not None,
            device=weight.device,
            dtype=weight.dtype,
        )
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    return PlainHConv2d(plain, conv.out_channels, conv.max_order + 1, conv.in_max_order == 0)


def _bn_scale(bn: HBatchNorm) -> torch.Tensor:
    return bn.scale_of(bn.running_power).detach()


def _plain_act(act: HNonLinearity) -> MagnitudeReLU:
    if act.fn is not F.relu:
        name = getattr(act.fn, "__name__", type(act.fn).__name__)
        raise HNetsError(f"export supports HNonLinearity with ReLU only; got fn={name}")
    return MagnitudeReLU(act.bias, act.eps)


def _plain_pool(pool: HAvgPool2d) -> PlainAvgPool:
    return PlainAvgPool(pool.kernel_size, pool.stride)


def _plain_block(block: HBlock) -> nn.Sequential:
    scale = None if block.bn is None else _bn_scale(block.bn)
    layers: list[nn.Module] = [_plain_conv(block.conv, scale), _plain_act(block.act)]
    if block.pool is not None:
        layers.append(_plain_pool(block.pool))
    return nn.Sequential(*layers)


#: The plain-PyTorch form of each hnets layer type: a function of an eval-mode layer.
#: A type of your own can be added (``PLAIN_FORMS[MyLayer] = lambda m: ...``).
PLAIN_FORMS: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    HBlock: _plain_block,
    HConv2d: _plain_conv,
    HBatchNorm: lambda bn: StreamScale(_bn_scale(bn)),
    HNonLinearity: _plain_act,
    HAvgPool2d: _plain_pool,
}


def plain_form(module: nn.Module) -> nn.Module | None:
    """The plain-PyTorch form of one hnets layer in eval mode (``None``: not an hnets layer)."""
    for kind in type(module).__mro__:
        if kind in PLAIN_FORMS:
            return PLAIN_FORMS[kind](module)
    return None


def _fold_sequential(seq: nn.Sequential) -> None:
    """Fold each ``HBatchNorm`` that directly follows an ``HConv2d`` into it (in place)."""
    names = list(seq._modules)
    for first, second in zip(names, names[1:], strict=False):
        conv, bn = seq._modules[first], seq._modules[second]
        if isinstance(conv, HConv2d) and isinstance(bn, HBatchNorm):
            seq._modules[first] = _plain_conv(conv, _bn_scale(bn))
            seq._modules[second] = nn.Identity()


def _replace(module: nn.Module) -> int:
    """Replace every hnets layer below ``module`` by its plain form, in place; how many."""
    if isinstance(module, nn.Sequential):
        _fold_sequential(module)
    count = 0
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        plain = plain_form(child)
        if plain is None:
            count += _replace(child)
        else:
            module._modules[name] = plain
            count += 1
    return count


def export(model: nn.Module) -> nn.Module:
    """A plain-PyTorch copy of ``model`` in eval mode, with the same outputs (to ~1e-6).

    Works on any module tree: each hnets layer is replaced by its form in
    :data:`PLAIN_FORMS`, everything else is copied as it is (``model`` itself is not
    changed). A model without hnets layers (:class:`~hnets.models.RegularCNN`) comes
    back as an eval-mode copy.

    Raises:
        HNetsError: for a layer without a plain form (an ``HNonLinearity`` other than ReLU).
    """
    was_training = model.training
    model.eval()
    try:
        plain = copy.deepcopy(model)
        root = plain_form(plain)
        if root is not None:
            plain = root
        else:
            _replace(plain)
    finally:
        model.train(was_training)
    plain.__dict__.pop("hnets_checkpoint", None)  # metadata, not part of the plain model
    # channels-last convolutions are ~1.3x faster on x86 CPUs (oneDNN); outputs are unchanged
    return plain.to(memory_format=torch.channels_last).eval()


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = 18,
    input_shape: tuple[int, int, int] | None = None,
) -> Path:
    """Write ``export(model)`` as ONNX with a dynamic batch dimension; returns the path.

    ``input_shape`` is ``(C, H, W)`` of one image (default: the ``image_shape`` its
    checkpoint records, else ``in_channels`` by 28 x 28); the ONNX model takes that size
    only. Needs the optional ``export`` extra (``onnx``, ``onnxscript``). The file is
    written to a temporary name and renamed.
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise HNetsError(
            "ONNX export needs the 'export' extra: pip install 'hnets[export]'"
        ) from None
    from ._io import atomic_write

    plain = export(model)
    example = torch.rand(2, *(input_shape or _input_shape(model)))
    batch = torch.export.Dim("batch", min=1, max=65536)
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # hide notes about optional torchvision operators
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                plain,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),  # by position: any forward argument name
                verbose=False,
            )
    finally:
        onnx_logger.setLevel(level)
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        fh.write(program.model_proto.SerializeToString())
    return path


def _input_shape(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images ``model`` was trained on, as far as it records them."""
    shape = getattr(model, "hnets_checkpoint", {}).get("extra", {}).get("image_shape")
    if shape:
        return (int(shape[0]), int(shape[-2]), int(shape[-1]))
    options = getattr(model, "hnets_config", {}).get("options", {})
    return (int(options.get("in_channels", 1)), 28, 28)


def _batched(
    fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """``fn`` on ``images`` batch by batch, without autograd, outputs concatenated."""
    from .evaluation import batched_logits

    batches = batched_logits(fn, images, batch_size=batch_size, device=images.device)
    return torch.cat([logits for (logits,) in batches])


def _agreement(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, int]:
    """Max absolute logit difference, and predictions that changed where they were not a tie.

    A prediction whose top two reference logits are closer than twice the observed
    difference is a numerical tie (common in untrained models) and is not counted.
    """
    diff = (logits - reference).abs().max().item()
    top2 = reference.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > 2 * diff
    changed = (logits.argmax(1) != reference.argmax(1)) & decided
    return diff, int(changed.sum())


def _compare(
    what: str, logits: torch.Tensor, reference: torch.Tensor, tolerance: float
) -> tuple[float, str]:
    """The max logit difference and a report line; HNetsError past ``tolerance``."""
    diff, changed = _agreement(logits, reference)
    line = (
        f"{what}: max |logit difference| {diff:.2e} on {len(reference)} test images "
        f"(largest |logit| {reference.abs().max().item():.1f}), {changed} predictions changed"
    )
    if diff > tolerance or changed:
        raise HNetsError(
            f"{what} disagrees with the original (max diff {diff:.2e}, "
            f"{changed} predictions changed)"
        )
    return diff, line


def _save_torchscript(plain: nn.Module, script_path: str | Path) -> None:
    """Script ``plain`` and write it to ``script_path`` atomically."""
    from ._io import atomic_write

    scripted = torch.jit.script(plain)
    with atomic_write(script_path, "wb") as fh:
        torch.jit.save(scripted, fh)


def _onnx_runner(
    model: nn.Module, onnx_path: str | Path, input_shape: tuple[int, ...]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Write ``model`` as ONNX; a function running it in onnxruntime on a batch.

    Raises HNetsError without onnxruntime (before writing anything).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise HNetsError(
            "checking the ONNX model needs onnxruntime: pip install 'hnets[export]'"
        ) from None
    export_onnx(model, onnx_path, input_shape=tuple(input_shape))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def export_checkpoint(
    checkpoint: str | Path,
    *,
    onnx_path: str | Path | None = None,
    script_path: str | Path | None = None,
    n_images: int = 512,
    data_dir: str | Path | None = None,
    variant: str | None = None,
    batch_size: int = 256,
    dataset: str | None = None,
) -> dict:
    """Export a checkpoint of any registered model and check the copies on test images.

    The logits must agree to 1e-5 (plain PyTorch) or 1e-4 (ONNX) plus 5e-5 of the
    largest logit (float32 round-off grows with the logits' size), and no prediction
    may change (ties aside); the images are the checkpoint's dataset's (or a compatible
    ``dataset``'s) first test images. Nothing is timed (``hnets bench`` measures speed).
    Raises :class:`HNetsError` when a check fails.
    """
    from .checkpoint import load_model
    from .data.model_data import load_checkpoint_data

    model = load_model(checkpoint)
    images = load_checkpoint_data(
        model.hnets_checkpoint,
        "test",
        dataset=dataset,
        variant=variant,
        data_dir=data_dir,
        limit=n_images,
        recorded_variant=False,
    ).images
    plain = export(model)
    reference = _batched(model, images, batch_size)
    # a trained model's logits reach tens, and float32 round-off grows with them (the
    # pretrained H-Net's own float32-vs-float64 error is ~1e-4): tolerances are 1e-5
    # (plain) and 1e-4 (ONNX) plus 5e-5 of the largest logit
    scale = 5e-5 * reference.abs().max().item()
    exported = _batched(plain, images, batch_size)
    diff, line = _compare("plain PyTorch", exported, reference, 1e-5 + scale)
    lines = [line]
    if script_path is not None:
        _save_torchscript(plain, script_path)
        lines.append(f"TorchScript written to {script_path}")
    if onnx_path is not None:
        run_onnx = _onnx_runner(model, onnx_path, images.shape[1:])
        onnx_out = _batched(run_onnx, images, batch_size)
        _, line = _compare(f"ONNX ({onnx_path}, onnxruntime)", onnx_out, reference, 1e-4 + scale)
        lines.append(line)
    return {"lines": lines, "max_diff": diff}
