"""Export trained models to plain PyTorch (no ``hnets`` needed to run them) and to ONNX.

:func:`export` turns a model into ordinary modules working on real feature maps
``(B, C * M * 2, H, W)`` (the harmonic layout flattened, channel index
``(c * M + m) * 2 + part``):

* every :class:`~hnets.nn.HConv2d` becomes one ``nn.Conv2d`` holding the synthesised
  dense filter (:meth:`~hnets.nn.HConv2d.dense_weight`); on the first layer, whose
  input is real, only the real-part columns are kept;
* an eval-mode :class:`~hnets.nn.HBatchNorm` is a fixed positive scale per stream,
  folded into the preceding convolution's weights;
* :class:`~hnets.nn.HNonLinearity` becomes :class:`MagnitudeReLU`, a few elementwise
  operations with a fixed bias;
* :class:`~hnets.nn.HAvgPool2d` becomes ``nn.AvgPool2d``.

The result is scriptable (``torch.jit.script``), traceable by ``torch.export`` and
exportable to ONNX. :class:`~hnets.models.RegularCNN` is already plain and is copied.
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
from .models import HNetMNIST, RegularCNN
from .nn import EvalBlur, HAvgPool2d, HBatchNorm, HConv2d, HNonLinearity, invariant_readout
from .nn.fused_relu import relu_pairs

__all__ = ["export", "export_onnx", "MagnitudeReLU", "ExportedHNet"]


class MagnitudeReLU(nn.Module):
    """``z * relu(|z|_eps + b) / |z|_eps`` on flattened harmonic maps ``(B, S * 2, H, W)``.

    ``bias`` has one entry per complex stream ``S = C * M``.
    """

    def __init__(self, bias: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.register_buffer("bias", bias.detach().flatten().clone())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s2, h, w = x.shape
        pairs = x.reshape(b, s2 // 2, 2, h, w).permute(0, 3, 4, 1, 2)  # (B, H, W, S, 2)
        out = relu_pairs(pairs, self.bias, self.eps)  # the definition hnets layers run
        return out.permute(0, 3, 4, 1, 2).reshape(b, s2, h, w)


class ExportedHNet(nn.Module):
    """Plain-PyTorch :class:`~hnets.models.HNetMNIST`: images ``(B, C, H, W)`` -> logits."""

    def __init__(
        self,
        features: nn.Sequential,
        head: nn.Conv2d,
        bias: torch.Tensor,
        input_scale: float,
        eps: float = 1e-6,
        eval_blur: float = 0.0,
    ) -> None:
        super().__init__()
        self.eval_blur = EvalBlur(eval_blur)
        self.features = features
        self.head = head
        self.register_buffer("bias", bias.detach().clone())
        self.input_scale = input_scale
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(self.eval_blur(x) * self.input_scale))
        b, _, h, w = z.shape
        harmonic = z.reshape(b, self.bias.shape[0], -1, 2, h, w)  # (B, K, M, 2, H, W)
        return invariant_readout(harmonic, self.bias, self.eps)


def _plain_conv(conv: HConv2d, scale: torch.Tensor | None, real_input: bool) -> nn.Conv2d:
    """One ``nn.Conv2d`` equal to ``conv`` (optionally followed by a per-stream ``scale``)."""
    with torch.no_grad():
        weight = conv.dense_weight()
        bias = None
        if conv.bias is not None:
            bias = torch.zeros(conv.out_channels, conv.max_order + 1, 2, dtype=weight.dtype)
            bias[:, 0] = conv.bias
            bias = bias.flatten()
        if scale is not None:
            per_row = scale.reshape(-1, 1).expand(-1, 2).reshape(-1)  # each stream's two parts
            weight = weight * per_row.view(-1, 1, 1, 1)
            if bias is not None:
                bias = bias * per_row
        if real_input:
            weight = weight[:, 0::2]  # imaginary input parts are zero
        plain = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=bias is not None,
        )
        plain.weight.copy_(weight)
        if bias is not None:
            plain.bias.copy_(bias)
    return plain


def _bn_scale(bn: HBatchNorm) -> torch.Tensor:
    return bn.scale_of(bn.running_power).detach()


def _flatten_layers(module: nn.Module) -> list[nn.Module]:
    """The leaf layers of ``module`` in forward order (blocks and Sequentials unrolled)."""
    if isinstance(module, (HConv2d, HBatchNorm, HNonLinearity, HAvgPool2d, nn.Identity)):
        return [module]
    return [leaf for child in module.children() for leaf in _flatten_layers(child)]


def _export_hnet(model: HNetMNIST) -> ExportedHNet:
    layers = [m for m in _flatten_layers(model.features) if not isinstance(m, nn.Identity)]
    plain: list[nn.Module] = []
    first = True
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, HConv2d):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            scale = _bn_scale(nxt) if isinstance(nxt, HBatchNorm) else None
            plain.append(_plain_conv(layer, scale, real_input=first))
            first = False
            i += 2 if scale is not None else 1
            continue
        if isinstance(layer, HNonLinearity):
            if layer.fn is not F.relu:
                raise HNetsError("export supports HNonLinearity with ReLU only")
            plain.append(MagnitudeReLU(layer.bias.detach().flatten(), layer.eps))
        elif isinstance(layer, HAvgPool2d):
            plain.append(nn.AvgPool2d(layer.kernel_size, layer.stride))
        elif isinstance(layer, HBatchNorm):
            raise HNetsError("export needs every HBatchNorm directly after an HConv2d")
        i += 1
    head = _plain_conv(model.head, None, real_input=False)
    return ExportedHNet(
        nn.Sequential(*plain),
        head,
        model.bias,
        float(model.input_scale),
        eval_blur=model.eval_blur.sigma,
    )


def export(model: nn.Module) -> nn.Module:
    """A plain-PyTorch copy of ``model`` in eval mode, with the same outputs (to ~1e-6).

    Raises:
        HNetsError: for a model type this function does not know.
    """
    was_training = model.training
    model.eval()
    try:
        if isinstance(model, HNetMNIST):
            plain = _export_hnet(model)
        elif isinstance(model, RegularCNN):
            plain = copy.deepcopy(model)
        else:
            raise HNetsError(
                f"cannot export a {type(model).__name__}: only HNetMNIST and RegularCNN"
            )
    finally:
        model.train(was_training)
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
                dynamic_shapes={"x": {0: batch}},
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


_TIMED_IMAGES = 5000


def _over(fn, images: torch.Tensor, batch_size: int):  # noqa: ANN001, ANN202
    """A callable that runs ``fn`` on ``images`` batch by batch."""

    def run() -> None:
        for i in range(0, len(images), batch_size):
            fn(images[i : i + batch_size])

    return run


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


def _logits(net: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``net``'s logits on ``images``, batch by batch, without autograd."""
    with torch.inference_mode():
        return torch.cat(
            [net(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        )


def _inference(net: nn.Module) -> Callable[[torch.Tensor], None]:
    """A callable that runs ``net`` on a batch without autograd, discarding the output."""

    def run(x: torch.Tensor) -> None:
        with torch.inference_mode():
            net(x)

    return run


def _check_plain(
    plain: nn.Module,
    images: torch.Tensor,
    reference: torch.Tensor,
    tolerance: float,
    batch_size: int,
) -> tuple[float, str]:
    """The exported model's max logit difference and report line; HNetsError past ``tolerance``."""
    exported = _logits(plain, images, batch_size)
    diff, changed = _agreement(exported, reference)
    line = (
        f"plain PyTorch: max |logit difference| {diff:.2e} on {len(images)} test images "
        f"(largest |logit| {reference.abs().max().item():.1f}), {changed} predictions changed"
    )
    if diff > tolerance or changed:
        raise HNetsError(
            f"exported model disagrees with the original (max diff {diff:.2e}, "
            f"{changed} predictions changed)"
        )
    return diff, line


def _save_torchscript(plain: nn.Module, script_path: str | Path) -> None:
    """Script ``plain`` and write it to ``script_path`` atomically."""
    from ._io import atomic_write

    scripted = torch.jit.script(plain)
    with atomic_write(script_path, "wb") as fh:
        torch.jit.save(scripted, fh)


def _check_onnx(
    model: nn.Module,
    onnx_path: str | Path,
    images: torch.Tensor,
    reference: torch.Tensor,
    tolerance: float,
    batch_size: int,
) -> tuple[str, Callable[[torch.Tensor], object]]:
    """Write ``model`` as ONNX and compare onnxruntime's logits with ``reference``.

    Returns the report line and a callable that runs the ONNX model on a batch.
    Raises HNetsError without onnxruntime (before writing anything) or past ``tolerance``.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise HNetsError(
            "checking the ONNX model needs onnxruntime: pip install 'hnets[export]'"
        ) from None
    export_onnx(model, onnx_path, input_shape=tuple(images.shape[1:]))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    onnx_out = torch.cat(
        [
            torch.from_numpy(session.run(None, {name: images[i : i + batch_size].numpy()})[0])
            for i in range(0, len(images), batch_size)
        ]
    )
    onnx_diff, onnx_changed = _agreement(onnx_out, reference)
    line = (
        f"ONNX ({onnx_path}, onnxruntime): max |logit difference| {onnx_diff:.2e}, "
        f"{onnx_changed} predictions changed"
    )
    if onnx_diff > tolerance or onnx_changed:
        raise HNetsError(
            f"ONNX model disagrees with the original (max diff {onnx_diff:.2e}, "
            f"{onnx_changed} predictions changed)"
        )
    return line, lambda x: session.run(None, {name: x.numpy()})


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
    """Export a checkpoint and check the copies against the original on test images.

    The logits must agree to 1e-5 (plain PyTorch) or 1e-4 (ONNX) plus 5e-5 of the
    largest logit (float32 round-off grows with the logits' size), and no
    prediction may change (ties aside); the images are the checkpoint's dataset's (or
    a compatible ``dataset``'s) first test images; all are timed side by side (interleaved,
    medians) with the original in eval mode on up to 5,000 of the images. Raises
    :class:`HNetsError` when a check fails.
    """
    from .checkpoint import load_checkpoint_data, load_model

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
    reference = _logits(model, images, batch_size)
    # a trained model's logits reach tens, and float32 round-off grows with them (the
    # pretrained H-Net's own float32-vs-float64 error is ~1e-4): tolerances are 1e-5
    # (plain) and 1e-4 (ONNX) plus 5e-5 of the largest logit
    scale = 5e-5 * reference.abs().max().item()
    diff, line = _check_plain(plain, images, reference, 1e-5 + scale, batch_size)
    lines = [line]
    timed = images[:_TIMED_IMAGES]  # agreement is checked on all images, speed on these
    candidates = {
        "original (eval)": _over(_inference(model), timed, batch_size),
        "exported plain PyTorch": _over(_inference(plain), timed, batch_size),
    }
    if script_path is not None:
        _save_torchscript(plain, script_path)
        lines.append(f"TorchScript written to {script_path}")
    if onnx_path is not None:
        line, run_onnx = _check_onnx(model, onnx_path, images, reference, 1e-4 + scale, batch_size)
        lines.append(line)
        candidates["ONNX (onnxruntime)"] = _over(run_onnx, timed, batch_size)
    from .bench import compare

    speeds = {t.name: len(timed) / t.median_s for t in compare(candidates, repeats=5, warmup=1)}
    base = speeds["original (eval)"]
    lines += [f"  {k:24s} {v:8.0f} images/s  ({v / base:.2f}x)" for k, v in speeds.items()]
    return {"lines": lines, "max_diff": diff, "speeds": speeds}
