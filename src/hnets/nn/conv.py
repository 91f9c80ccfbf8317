r"""Harmonic convolution: :class:`HConv2d`.

The layer owns its parameters, its basis and the synthesis matrices built from it, and
decides per call which scheme runs (:mod:`hnets.nn.dispatch`). The schemes themselves
(dense bank, Gauss, Karatsuba) are in :mod:`hnets.nn.schemes`; the filter synthesis
helpers in :mod:`hnets.nn.synthesis`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _native
from ..basis import default_n_rings, harmonic_basis
from . import dispatch
from .functional import check_harmonic
from .schemes import BANK_OF, NATIVE_SCHEMES, SCHEMES, as_harmonic, as_images, convolve
from .synthesis import Synthesis, bank_torch, complex_basis_matrix, filters_from

__all__ = ["HConv2d"]


def _padding_of(kernel_size: int, padding: str | int) -> int:
    """The padding in pixels for ``padding``: ``"same"``, ``"valid"`` or an int >= 0."""
    if padding == "same":
        return kernel_size // 2
    if padding == "valid":
        return 0
    if isinstance(padding, int) and padding >= 0:
        return padding
    raise ValueError(f"padding must be 'same', 'valid' or an int >= 0; got {padding!r}")


class HConv2d(nn.Module):
    r"""Harmonic convolution between rotation-order streams (Worrall et al., 2017).

    Every (output channel ``o``, input channel ``i``) pair owns, for each filter order
    :math:`m \ge 0`, a radial profile on ``n_rings`` rings and (with ``phase=True``)
    a phase offset :math:`\beta`:

    .. math::

        W_{m,oi}(r,\phi) = R_{m,oi}(r)\, e^{i(m\phi + \beta_{m,oi})},\qquad
        W_{-m} = \overline{W_m}.

    Input stream of order :math:`m_{in}` feeds output stream of order :math:`m_{out}`
    through the filter of order :math:`m_{out} - m_{in}` (complex cross-correlation),
    summed over input channels and orders. Every parameter reaches some output: the
    filter orders used are exactly :math:`0..\max(\text{max\_order}, \text{in\_max\_order})`.

    **Equivariance.** A counter-clockwise rotation of the input by :math:`\theta`
    rotates each output map and multiplies order :math:`m` by :math:`e^{im\theta}` —
    exactly for multiples of 90 degrees (odd kernels, stride 1, or stride 2 on odd
    sizes), up to discretisation for other angles.

    **Initialisation.** Ring weights are drawn from :math:`\mathcal N(0, 1/\text{fan\_in})`
    with ``fan_in = in_channels * (in_max_order + 1) * n_rings``; since each basis
    image has unit norm, a white input with :math:`E|z|^2 = 1` per stream gives
    outputs with :math:`E|z|^2 \approx 1` per stream. Phases are uniform in
    :math:`[0, 2\pi)`.

    **Speed.** The basis is a non-persistent buffer built once (it follows ``.to(device,
    dtype)``) and the filter bank is one small matrix product of the complex ring
    coefficients with a precomputed synthesis matrix, so synthesis costs next to
    nothing (in training on float32 CPU tensors one native pass each way, written
    straight in the layout the convolution reads). All order pairs then go through one
    real convolution with the dense filter bank (:meth:`dense_weight`), or, with
    ``impl="gauss"``, through Gauss's three real products (``W_r``, ``W_r + W_i``,
    ``W_i - W_r`` against ``X_r + X_i``, ``X_i``, ``X_r``), 3/4 of the arithmetic, or,
    with ``impl="karatsuba"`` (orders 0 and 1 on both sides), through three complex
    products instead of four (the order-0 filter serves both diagonal order pairs:
    ``y_0 = A + B``, ``y_1 = A + C`` with ``A = W_0 (x_0 + x_1)``,
    ``B = (W_{-1} - W_0) x_1``, ``C = (W_1 - W_0) x_0``), each by Gauss's trick: nine
    quarter-width real convolutions, 9/16 of the arithmetic (:mod:`hnets.nn.schemes`
    states each scheme's maths). ``impl="auto"`` runs what ``hnets tune`` stored for
    this layer's shape on this machine, else the fixed table of
    :func:`hnets.nn.dispatch.table_choice` (by shape, device and CPU capability:
    Karatsuba for orders 0..1 from 32 channels, Gauss from 32 complex streams, the
    dense bank for few streams); nothing is timed during a call. On float32 CPU
    tensors the (de)interleaving around these products is one pass of a native kernel
    (:mod:`hnets._native`); without it only Gauss's trick is used, from 64 streams.
    A first layer (``in_max_order=0``) also takes real images ``(B, C, H, W)``
    directly and convolves them with the real-input half of the bank. Outputs are
    stored channels-last (memory ``(B, H, W, C, M, 2)``), so the next convolution reads
    them without a copy. In eval mode under ``torch.no_grad()``/``torch.inference_mode()``
    the synthesised filter is cached and reused until a parameter changes, the module
    changes device or dtype, or ``.train()`` is called; the ``state_dict`` is the same
    in both modes.

    Args:
        in_channels: input channels (each has ``in_max_order + 1`` complex streams).
        out_channels: output channels (each has ``max_order + 1`` complex streams).
        kernel_size: odd filter size ``k``.
        max_order: highest output rotation order.
        in_max_order: highest input rotation order (default ``max_order``; use 0 on
            the first layer of a network, which then also takes real images).
        n_rings: rings of the radial profile (default :func:`hnets.basis.default_n_rings`).
        phase: learn a phase offset per (order, output, input).
        stride: convolution stride.
        padding: ``"same"`` (``k // 2``), ``"valid"`` (0) or an integer.
        bias: add a learned complex bias to the order-0 output stream (the only
            stream where a constant commutes with rotations).
        impl: ``"auto"``, ``"dense"``, ``"dense-nchw"``, ``"gauss"`` or ``"karatsuba"``:
            how the convolution runs (same result up to float round-off; see
            :mod:`hnets.nn.schemes`). ``"auto"``: what ``hnets tune`` stored for this
            layer's shape, else the fixed table (see *Speed* above).

    Shape:
        - Input: ``(B, in_channels, in_max_order + 1, 2, H, W)``; with ``in_max_order=0``
          also real images ``(B, in_channels, H, W)``, taken as ``hnets.lift(x)`` but
          convolved with only the real-input half of the filter bank (half the work)
        - Output: ``(B, out_channels, max_order + 1, 2, H_out, W_out)`` with
          ``H_out = (H + 2 * padding - k) // stride + 1``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        max_order: int = 1,
        in_max_order: int | None = None,
        n_rings: int | None = None,
        phase: bool = True,
        stride: int = 1,
        padding: str | int = "same",
        bias: bool = False,
        impl: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be >= 1; got {in_channels} -> {out_channels}")
        if max_order < 0 or (in_max_order is not None and in_max_order < 0):
            raise ValueError("rotation orders must be >= 0")
        if stride < 1:
            raise ValueError(f"stride must be >= 1; got {stride}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.max_order = max_order
        self.in_max_order = max_order if in_max_order is None else in_max_order
        self.n_rings = default_n_rings(kernel_size) if n_rings is None else n_rings
        self.stride = stride
        self.padding = _padding_of(kernel_size, padding)
        self._padding_arg = padding
        n_filter_orders = max(self.max_order, self.in_max_order) + 1
        factory = {"device": device, "dtype": dtype}
        self._register_buffers(n_filter_orders, factory)
        self.weight = nn.Parameter(
            torch.empty(n_filter_orders, out_channels, in_channels, self.n_rings, **factory)
        )
        if phase:
            self.phase = nn.Parameter(
                torch.empty(n_filter_orders, out_channels, in_channels, **factory)
            )
        else:
            self.register_parameter("phase", None)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, 2, **factory))
        else:
            self.register_parameter("bias", None)
        if impl not in ("auto", *SCHEMES):
            raise ValueError(f"impl must be 'auto' or one of {', '.join(SCHEMES)}; got {impl!r}")
        if impl == "karatsuba" and self.karatsuba_map is None:
            raise ValueError("impl='karatsuba' needs max_order=1 and in_max_order=1")
        self.impl = impl  # "auto" is resolved per call (see _choose_impl)
        # the inference filters: (scheme, versions, ...) and the banks (see _filters)
        self._cache: tuple[tuple, tuple[torch.Tensor, ...]] | None = None
        self._layouts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # see _layout
        self.reset_parameters()

    def _register_buffers(self, n_filter_orders: int, factory: dict) -> None:
        """The non-persistent buffers: basis, order index and synthesis matrices."""
        basis = harmonic_basis(self.kernel_size, n_filter_orders - 1, self.n_rings)
        self.register_buffer("basis", complex_basis_matrix(basis).to(**factory), persistent=False)
        # which filter (index into orders -F+1..F-1 laid out as 0..F-1, then -1..-(F-1))
        # connects input order mi to output order mo
        index = torch.empty(self.max_order + 1, self.in_max_order + 1, dtype=torch.long)
        for mo in range(self.max_order + 1):
            for mi in range(self.in_max_order + 1):
                d = mo - mi
                index[mo, mi] = d if d >= 0 else n_filter_orders - 1 - d
        self.register_buffer("order_index", index, persistent=False)
        # the filter banks are linear in the complex ring coefficients: precompute the
        # matrices that map one (out, in) pair's coefficients to its blocks of the
        # dense / Gauss banks, so synthesis is one small matmul (and its backward another)
        dense_map, gauss_map, karatsuba_map = self._synthesis_maps(n_filter_orders)
        self.register_buffer("dense_map", dense_map.to(**factory), persistent=False)
        self.register_buffer("gauss_map", gauss_map.to(**factory), persistent=False)
        if karatsuba_map is not None:
            karatsuba_map = karatsuba_map.to(**factory)
        self.register_buffer("karatsuba_map", karatsuba_map, persistent=False)

    # -- parameters -------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Re-draw the parameters with the initialisation described in the class docstring."""
        fan_in = self.in_channels * (self.in_max_order + 1) * self.n_rings
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0 / math.sqrt(fan_in))
            if self.phase is not None:
                self.phase.uniform_(0.0, 2.0 * math.pi)
            if self.bias is not None:
                self.bias.zero_()
        self._cache = None

    def train(self, mode: bool = True) -> HConv2d:
        if mode != self.training:  # model.eval() on an eval model keeps the cached filter
            self._cache = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - torch's own signature
        self._cache = None
        self._layouts = {}
        return super()._apply(fn, recurse)

    # -- filter synthesis ---------------------------------------------------------------
    def _blocks_from(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real, imaginary banks ``(o * Mo, i * Mi, k, k)`` from filters ``(F, o, i, 2, k, k)``."""
        conj = torch.stack([w[1:, :, :, 0], -w[1:, :, :, 1]], dim=3)
        bank = torch.cat([w, conj], dim=0)[self.order_index]  # (Mo, Mi, o, i, 2, k, k)
        bank = bank.permute(4, 2, 0, 3, 1, 5, 6)  # (2, o, Mo, i, Mi, k, k)
        k = self.kernel_size
        o, i = w.shape[1], w.shape[2]
        shape = (2, o * (self.max_order + 1), i * (self.in_max_order + 1), k, k)
        real, imag = bank.reshape(shape).unbind(0)
        return real, imag

    def _synthesis_maps(
        self, n_filter_orders: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Matrices ``(F*R*2, ...)`` taking one pair's coefficients to its dense, Gauss and
        (orders 0..1 on both sides, else ``None``) Karatsuba blocks.

        Built by pushing unit coefficients through the reference construction
        (:meth:`_blocks_from`), in float64: row ``q`` is the block of coefficient ``q``.
        """
        q = n_filter_orders * self.n_rings * 2
        eye = torch.eye(q, dtype=torch.float64).view(q, n_filter_orders, self.n_rings, 2)
        coeff = eye.permute(1, 0, 2, 3).unsqueeze(2)  # (F, q "out", 1 "in", R, 2)
        w = filters_from(coeff, self.basis)
        real, imag = self._blocks_from(w)  # (q * Mo, Mi, k, k)
        mo, mi, k = self.max_order + 1, self.in_max_order + 1, self.kernel_size
        real = real.reshape(q, mo, mi, k, k)
        imag = imag.reshape(q, mo, mi, k, k)
        top = torch.stack([real, -imag], dim=3)  # output real part: [W_r, -W_i]
        bottom = torch.stack([imag, real], dim=3)  # output imaginary part: [W_i, W_r]
        dense = torch.stack([top, bottom], dim=2)  # (q, Mo, 2, Mi, 2, k, k)
        gauss = torch.stack([real, real + imag, imag - real], dim=1)  # (q, 3, Mo, Mi, k, k)
        karatsuba = None
        if mo == mi == 2:  # K_A = W_0, K_B = W_-1 - W_0, K_C = W_1 - W_0 (schemes.KaratsubaConv)
            w0 = (real[:, 0, 0], imag[:, 0, 0])
            ks = [w0] + [
                (real[:, a, b] - w0[0], imag[:, a, b] - w0[1]) for a, b in ((0, 1), (1, 0))
            ]
            karatsuba = torch.stack([m for kr, ki in ks for m in (kr, kr + ki, ki - kr)], dim=1)
            karatsuba = karatsuba.reshape(q, -1).float()  # (q, 9 k k)
        return dense.reshape(q, -1).float(), gauss.reshape(q, -1).float(), karatsuba

    def dense_weight(self, *, real_input: bool = False) -> torch.Tensor:
        """The equivalent real ``Conv2d`` weight ``(out * Mo * 2, in * Mi * 2, k, k)``.

        Applied to the input viewed as ``(B, in * Mi * 2, H, W)``, a plain
        convolution with it gives the output viewed as ``(B, out * Mo * 2, H, W)``:
        this is what :func:`hnets.export` uses. With ``real_input=True`` (layers with
        ``in_max_order=0`` only) just the columns that read real parts:
        ``(out * Mo * 2, in, k, k)``, the weight for real images ``(B, in, H, W)``.
        Stored channels-last (memory ``(out, k, k, in)``), what the convolution of a
        channels-last input wants: otherwise it would copy the weight on every call.
        """
        if real_input and self.in_max_order != 0:
            raise ValueError("real_input needs in_max_order=0")
        (weight,) = self._torch_banks("real" if real_input else "dense")
        return weight

    def _layout(self, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The synthesis matrix of ``impl`` as ``(q, G, A, B)``: the bank
        ``(G, O, A, I, B) = sum_q coefficients[O, I, q] matrix[q, G, A, B]`` is, in memory,
        the channels-last weights of the scheme (:meth:`_banks_of`): one dense bank
        (``G = 1``, ``A = (2 Mo, k, k)``, ``B = (Mi, 2)``, or ``B = Mi`` for real input),
        Gauss's three (``G = 3``, ``A = (Mo, k, k)``, ``B = Mi``) or Karatsuba's nine
        (``G = 9``, ``A = (k, k)``, ``B = 1``); and its transpose ``(G, A, B, q)`` for the
        native backward."""
        impl = BANK_OF.get(impl, impl)
        if impl not in self._layouts:
            # built outside inference mode even when first asked for inside it: autograd
            # saves these matrices in a later training call
            with torch.inference_mode(False), torch.no_grad():
                self._layouts[impl] = self._build_layout(impl)
        return self._layouts[impl]

    def _build_layout(self, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.dense_map.shape[0]
        mo, mi, k = self.max_order + 1, self.in_max_order + 1, self.kernel_size
        if impl == "karatsuba":
            m = self.karatsuba_map.view(q, 9, k * k, 1)
        elif impl == "gauss":
            m = self.gauss_map.view(q, 3, mo, mi, k, k).permute(0, 1, 2, 4, 5, 3)
            m = m.reshape(q, 3, mo * k * k, mi)
        else:
            m = self.dense_map.view(q, mo * 2, mi, 2, k, k)
            if impl == "real":
                m = m[:, :, :, :1]
            m = m.permute(0, 1, 4, 5, 2, 3).reshape(q, 1, mo * 2 * k * k, -1)
        return m.contiguous(), m.permute(1, 2, 3, 0).contiguous()

    def _banks_of(self, bank: torch.Tensor, impl: str) -> tuple[torch.Tensor, ...]:
        """The contiguous ``(G, O, A, I, B)`` bank of ``impl`` as its channels-last weights."""
        o, i, k = self.out_channels, self.in_channels, self.kernel_size
        mo, mi = self.max_order + 1, self.in_max_order + 1
        impl = BANK_OF.get(impl, impl)
        if impl == "karatsuba":
            return tuple(bank.view(9, o, k, k, i).permute(0, 1, 4, 2, 3).unbind(0))
        if impl == "gauss":
            banks = bank.view(3, o * mo, k, k, i * mi).permute(0, 1, 4, 2, 3)
            return tuple(banks.unbind(0))
        return (bank.view(o * mo * 2, k, k, -1).permute(0, 3, 1, 2),)

    def _torch_banks(self, impl: str) -> tuple[torch.Tensor, ...]:
        """The weights of ``impl`` by PyTorch ops (any device and dtype, differentiable)."""
        bank = bank_torch(self.weight, self.phase, self._layout(impl)[0])
        return self._banks_of(bank.contiguous(), impl)

    def _synthesise(self, impl: str) -> tuple[torch.Tensor, ...]:
        params = [self.weight] if self.phase is None else [self.weight, self.phase]
        if torch.is_grad_enabled() and self.weight.requires_grad and _native.usable(*params):
            return self._banks_of(
                Synthesis.apply(self.weight, self.phase, *self._layout(impl)), impl
            )
        return self._torch_banks(impl)

    def _choose_impl(self, images: torch.Tensor) -> str:
        """``impl``, with ``"auto"`` resolved for this input (:mod:`hnets.nn.dispatch`)."""
        if self.impl != "auto":
            return self.impl
        training = torch.is_grad_enabled() and (images.requires_grad or self.weight.requires_grad)
        tracing = (
            torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
        )
        if not tracing:
            choice = dispatch.tuned(self.dispatch_key(images, training), self.candidates())
            if choice is not None:
                return choice
        return dispatch.table_choice(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            in_orders=self.in_max_order + 1,
            out_orders=self.max_order + 1,
            pixels=images.shape[-2] * images.shape[-1],
            native=_native.usable(images, memory_format=torch.channels_last),
            karatsuba=self.karatsuba_map is not None,
            training=training,
            capability=dispatch.capability(images.device),
        )

    def candidates(self) -> tuple[str, ...]:
        """The schemes this layer can run on harmonic input (what ``hnets tune`` times)."""
        return tuple(s for s in SCHEMES if s != "karatsuba" or self.karatsuba_map is not None)

    def dispatch_key(self, images: torch.Tensor, training: bool) -> str:
        """The tuning cache's key for a call on channels-last ``images`` (:func:`as_images`)."""
        return dispatch.signature(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            in_orders=self.in_max_order + 1,
            out_orders=self.max_order + 1,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self._padding_arg,
            height=images.shape[-2],
            width=images.shape[-1],
            batch=images.shape[0],
            dtype=images.dtype,
            device=images.device,
            training=training,
        )

    def _filters(self, impl: str) -> tuple[torch.Tensor, ...]:
        use_cache = (
            not self.training and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        )
        if not use_cache:
            return self._synthesise(impl)
        key = (
            impl,
            self.weight._version,
            None if self.phase is None else self.phase._version,
            self.weight.data_ptr(),
            torch.is_inference_mode_enabled(),
        )
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._synthesise(impl))
        return self._cache[1]

    # -- forward ------------------------------------------------------------------------
    def _prepare(self, z: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Check ``z`` and return it as channels-last images, with the scheme to run."""
        if z.dim() == 4 and self.in_max_order == 0:
            # real images: the same as self(lift(z)), with half the input channels
            if z.shape[1] != self.in_channels:
                raise ValueError(
                    f"HConv2d expects {self.in_channels} channels; got {z.shape[1]} "
                    f"({tuple(z.shape)})"
                )
            return z.contiguous(memory_format=torch.channels_last), "real"
        check_harmonic(z, channels=self.in_channels, orders=self.in_max_order + 1, where="HConv2d")
        images = as_images(z)
        return images, self._choose_impl(images)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images, impl = self._prepare(z)
        weights = [w.to(images.dtype) for w in self._filters(impl)]
        out = self._convolve(images, impl, weights)
        result = as_harmonic(out, self.out_channels, self.max_order + 1)
        if self.bias is not None:  # order 0 only: a constant commutes with rotations there
            onehot = torch.zeros(self.max_order + 1, 1, dtype=result.dtype, device=result.device)
            onehot[0] = 1.0
            bias = self.bias.to(result.dtype)[:, None, :] * onehot  # (out, Mo, 2)
            result = result + bias.view(1, self.out_channels, self.max_order + 1, 2, 1, 1)
        return result

    def _convolve(
        self, images: torch.Tensor, impl: str, weights: list[torch.Tensor]
    ) -> torch.Tensor:
        """The convolution of ``images`` by scheme ``impl`` with its filter banks."""
        return convolve(images, impl, weights, self.stride, self.padding)

    def unmerged_products(self, z: torch.Tensor) -> list[torch.Tensor] | None:
        """For inference fusion: the real products of Gauss's or Karatsuba's scheme for ``z``.

        Returns the three or nine channels-last ``(B, T, H_out, W_out)`` products that
        :func:`hnets._native.merge3` (signs -1, +1) or :func:`hnets._native.merge9` would
        merge into this layer's output, or ``None`` where the layer would not run either
        scheme with the native kernels, has a bias, or autograd is recording.
        """
        if torch.is_grad_enabled() or self.bias is not None or z.dim() != 6:
            return None
        images, impl = self._prepare(z)
        if impl not in NATIVE_SCHEMES or not _native.usable(
            images, memory_format=torch.channels_last
        ):
            return None
        weights = [w.to(images.dtype) for w in self._filters(impl)]
        return NATIVE_SCHEMES[impl].products(images, weights, self.stride, self.padding)[0]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"max_order={self.max_order}, in_max_order={self.in_max_order}, "
            f"n_rings={self.n_rings}, phase={self.phase is not None}, stride={self.stride}, "
            f"padding={self._padding_arg!r}, bias={self.bias is not None}"
        )
