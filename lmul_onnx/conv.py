"""ONNX ``Conv`` and ``ConvTranspose`` with L-Mul products, in numpy (SPEC section 3).

The executable form of ``LMulConv`` and ``LMulConvTranspose``: every attribute and shape
rule of the standard ops (1-D, 2-D and 3-D; ``group`` incl. depthwise; ``dilations``,
``strides``, ``pads``, ``auto_pad``, ``kernel_shape``; ``output_padding`` and
``output_shape`` for the transpose), every product an L-Mul computed by
:mod:`lmul_onnx.numerics` (no second copy of the arithmetic), products summed in float64
and the sum rounded once, then the bias added in float32.

Shape rules follow onnxruntime's CPU ops, which is what a converted model is compared
against: for ``ConvTranspose`` with ``output_shape`` the total padding is split with the
larger half at the end, except under ``auto_pad=SAME_UPPER`` where it goes first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lmul_onnx import numerics

__all__ = [
    "ConvGeometry",
    "conv_geometry",
    "conv_operation_counts",
    "conv_transpose_geometry",
    "lmul_conv",
    "lmul_conv_transpose",
]

AUTO_PAD_VALUES = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


@dataclass(frozen=True)
class ConvGeometry:
    """Resolved spatial attributes of one Conv / ConvTranspose node for one input shape."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    output: tuple[int, ...]


def _ints(name: str, values: Sequence[int] | None, rank: int, default: int, minimum: int) -> tuple[int, ...]:
    if values is None:
        return (default,) * rank
    values = tuple(int(v) for v in values)
    if len(values) != rank:
        raise ValueError(f"attribute '{name}' must have {rank} values, got {len(values)}")
    if any(v < minimum for v in values):
        raise ValueError(f"attribute '{name}' values must be >= {minimum}, got {list(values)}")
    return values


def _common(
    spatial: int,
    weight_kernel: Sequence[int],
    auto_pad: str,
    dilations: Sequence[int] | None,
    kernel_shape: Sequence[int] | None,
    strides: Sequence[int] | None,
    pads: Sequence[int] | None,
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    if auto_pad not in AUTO_PAD_VALUES:
        raise ValueError(
            f"attribute 'auto_pad' must be one of {', '.join(AUTO_PAD_VALUES)}, got {auto_pad!r}"
        )
    if not 1 <= spatial <= 3:
        raise ValueError(f"inputs must have 1 to 3 spatial dimensions, got {spatial}")
    kernel = tuple(int(k) for k in weight_kernel)
    if kernel_shape is not None and tuple(int(k) for k in kernel_shape) != kernel:
        raise ValueError(
            f"attribute 'kernel_shape' {list(kernel_shape)} differs from W's kernel {list(kernel)}"
        )
    if any(k < 1 for k in kernel):
        raise ValueError(f"W's kernel dimensions must be positive, got {list(kernel)}")
    pad_values = _ints("pads", pads, 2 * spatial, 0, 0)
    return (
        kernel,
        _ints("strides", strides, spatial, 1, 1),
        _ints("dilations", dilations, spatial, 1, 1),
        pad_values,
    )


def conv_geometry(
    input_spatial: Sequence[int],
    weight_kernel: Sequence[int],
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> ConvGeometry:
    """ONNX ``Conv``'s output size and padding per spatial dimension."""
    rank = len(input_spatial)
    kernel, stride, dilation, pad_values = _common(
        rank, weight_kernel, auto_pad, dilations, kernel_shape, strides, pads
    )
    begin, end, output = [], [], []
    for i, size in enumerate(input_spatial):
        extent = (kernel[i] - 1) * dilation[i] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out = -(-size // stride[i])
            total = max(0, (out - 1) * stride[i] + extent - size)
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            head_tail = (head, total - head)
        elif auto_pad == "VALID":
            head_tail = (0, 0)
        else:
            head_tail = (pad_values[i], pad_values[i + rank])
        out = (size + head_tail[0] + head_tail[1] - extent) // stride[i] + 1
        if out < 1:
            raise ValueError(
                f"spatial dimension {i} of size {size} (padded {size + sum(head_tail)}) is smaller "
                f"than the dilated kernel ({extent})"
            )
        begin.append(head_tail[0])
        end.append(head_tail[1])
        output.append(out)
    return ConvGeometry(kernel, stride, dilation, tuple(begin), tuple(end), tuple(output))


def conv_transpose_geometry(
    input_spatial: Sequence[int],
    weight_kernel: Sequence[int],
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    kernel_shape: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> ConvGeometry:
    """ONNX ``ConvTranspose``'s output size and padding (onnxruntime's rules)."""
    rank = len(input_spatial)
    kernel, stride, dilation, pad_values = _common(
        rank, weight_kernel, auto_pad, dilations, kernel_shape, strides, pads
    )
    adjust = _ints("output_padding", output_padding, rank, 0, 0)
    wanted = None
    if output_shape is not None:
        wanted = [int(v) for v in output_shape]
        if len(wanted) == rank + 2:
            wanted = wanted[2:]
        if len(wanted) != rank or any(v < 1 for v in wanted):
            raise ValueError(
                f"attribute 'output_shape' must hold {rank} positive sizes, got {list(output_shape)}"
            )
    begin, end, output = [], [], []
    for i, size in enumerate(input_spatial):
        extent = (kernel[i] - 1) * dilation[i] + 1
        full = (size - 1) * stride[i] + adjust[i] + extent
        if wanted is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            # The requested size (SAME: input * stride, at most the full output); surplus
            # padding is split, the larger half first unless SAME_UPPER; an explicit size
            # beyond the full output gets zeros at the end.
            out = wanted[i] if wanted is not None else min(size * stride[i], full)
            total = max(0, full - out)
            head = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            head_tail = (head, total - head)
        else:
            head_tail = (0, 0) if auto_pad == "VALID" else (pad_values[i], pad_values[i + rank])
            out = full - head_tail[0] - head_tail[1]
        if out < 1:
            raise ValueError(f"output spatial dimension {i} would be {out}: pads exceed the output")
        # The output must be one this input size produces (onnxruntime's check): this is
        # what bounds output_padding below the stride.
        if (out + head_tail[0] + head_tail[1] - extent) // stride[i] + 1 != size:
            raise ValueError(
                f"output size {out} of spatial dimension {i} (output_padding {adjust[i]}) is inconsistent "
                f"with input size {size} and stride {stride[i]}"
            )
        begin.append(head_tail[0])
        end.append(head_tail[1])
        output.append(out)
    return ConvGeometry(kernel, stride, dilation, tuple(begin), tuple(end), tuple(output))


def conv_operation_counts(
    x_shape: Sequence[int], w_shape: Sequence[int], y_shape: Sequence[int], *, bias: bool, transpose: bool
) -> tuple[int, int]:
    """Scalar multiplications and additions of one Conv / ConvTranspose (energy estimates).

    Conv: every output sums C/group * prod(kernel) products (padding included, as an
    im2col product computes them). ConvTranspose: every input element meets the
    M/group * prod(kernel) weights of its group, and each product is added into an
    accumulator once. The bias adds one addition per output.
    """
    outputs = math.prod(y_shape)
    if transpose:
        products = math.prod(x_shape) * math.prod(w_shape[1:])
        additions = products
    else:
        depth = math.prod(w_shape[1:])
        products = outputs * depth
        additions = outputs * max(depth - 1, 0)
    return products, additions + (outputs if bias else 0)


def _operands(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    group: int,
    mantissa_bits: int | None,
    offset: int | None,
    transpose: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.dtype, int, int, int]:
    """Arrays, dtype, ``m``, ``offset`` and output channels of a Conv / ConvTranspose call."""
    x, w = np.asarray(x), np.asarray(w)
    b = None if b is None else np.asarray(b)
    dtype, m, offset = numerics._resolve(x, w, mantissa_bits, offset)
    return x, w, b, dtype, m, offset, _check_operands(x, w, b, group, transpose)


def _check_operands(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int, transpose: bool) -> int:
    """Rank, channel and group rules; returns the number of output channels."""
    if x.ndim < 3 or w.ndim != x.ndim:
        raise ValueError(f"X and W must both have rank 3 to 5, got {x.shape} and {w.shape}")
    if isinstance(group, bool) or int(group) != group or group < 1:
        raise ValueError(f"attribute 'group' must be a positive int, got {group}")
    channels = x.shape[1]
    if transpose:
        if w.shape[0] != channels or channels % group:
            raise ValueError(f"W {w.shape} does not match X's {channels} channels in {group} groups")
        out_channels = w.shape[1] * group
    else:
        if w.shape[1] * group != channels or w.shape[0] % group:
            raise ValueError(f"W {w.shape} does not match X's {channels} channels in {group} groups")
        out_channels = w.shape[0]
    if b is not None and b.shape != (out_channels,):
        raise ValueError(f"B must have shape ({out_channels},), got {b.shape}")
    return out_channels


def _finish(
    sums: np.ndarray, b: np.ndarray | None, dtype: np.dtype, accumulate: type, out_channels: int
) -> np.ndarray:
    """Round the float64 sums once, add the bias in float32 (SPEC 3) and narrow to ``dtype``."""
    shape = (1, out_channels) + (1,) * (sums.ndim - 2)
    if accumulate == np.float64:
        return sums if b is None else sums + numerics._to_float32(b).astype(np.float64).reshape(shape)
    y = sums.astype(np.float32)
    if b is not None:
        y = y + numerics._to_float32(b).reshape(shape)
    with np.errstate(over="ignore"):
        return y.astype(dtype)


def lmul_conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    mantissa_bits: int | None = None,
    offset: int | None = None,
    accumulate: type = np.float32,
) -> np.ndarray:
    """ONNX ``Conv`` with every product an L-Mul (the ``lmul.LMulConv`` op).

    Args:
        x: input (N, C, *spatial), float32 / float16 / bfloat16.
        w: weights (M, C / group, *kernel) of the same dtype.
        b: optional bias (M,).
        auto_pad, dilations, group, kernel_shape, pads, strides: as in ONNX ``Conv``.
        mantissa_bits: operand mantissa width ``m`` (default: the dtype's own width).
        offset: the SPEC section 4 constant (default: the paper's), as in
            :func:`lmul_onnx.numerics.lmul`.
        accumulate: ``np.float64`` returns the unrounded float64 sums (the tests' oracle).

    Returns:
        Y (N, M, *output_spatial): sums of exact L-Mul products (padding contributes
        zero products), rounded once to float32, plus the bias, in ``x``'s dtype.
    """
    x, w, b, dtype, m, offset, out_channels = _operands(
        x, w, b, group, mantissa_bits, offset, transpose=False
    )
    geometry = conv_geometry(
        x.shape[2:], w.shape[2:], auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape,
        pads=pads, strides=strides,
    )  # fmt: skip
    batch, channels = x.shape[:2]
    x32 = numerics._to_float32(x)
    padded = np.pad(
        x32, [(0, 0), (0, 0), *zip(geometry.pads_begin, geometry.pads_end, strict=True)], constant_values=0.0
    )
    # im2col: (N, C, *kernel, *output) -> (N, group, C/group * prod(kernel), prod(output))
    columns = np.empty((batch, channels, *geometry.kernel, *geometry.output), dtype=np.float32)
    for tap in np.ndindex(*geometry.kernel):
        window = tuple(
            slice(k * d, k * d + (o - 1) * s + 1, s)
            for k, d, o, s in zip(tap, geometry.dilations, geometry.output, geometry.strides, strict=True)
        )
        columns[(slice(None), slice(None), *tap)] = padded[(slice(None), slice(None), *window)]
    pixels = int(np.prod(geometry.output))
    columns = columns.reshape(batch, group, -1, pixels)
    weights = numerics._to_float32(w).reshape(group, out_channels // group, -1)
    sums = numerics._lmul_matmul_float64(weights, columns, m, offset)  # (N, group, M / group, pixels)
    sums = sums.reshape(batch, out_channels, *geometry.output)
    return _finish(sums, b, dtype, accumulate, out_channels)


def lmul_conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    mantissa_bits: int | None = None,
    offset: int | None = None,
    accumulate: type = np.float32,
) -> np.ndarray:
    """ONNX ``ConvTranspose`` with every product an L-Mul (the ``lmul.LMulConvTranspose`` op).

    Args:
        x: input (N, C, *spatial), float32 / float16 / bfloat16.
        w: weights (C, M / group, *kernel) of the same dtype.
        b: optional bias (M,).
        auto_pad, dilations, group, kernel_shape, output_padding, output_shape, pads,
            strides: as in ONNX ``ConvTranspose`` (onnxruntime's reading of them).
        mantissa_bits, offset, accumulate: as in :func:`lmul_conv`.
    """
    x, w, b, dtype, m, offset, out_channels = _operands(x, w, b, group, mantissa_bits, offset, transpose=True)
    geometry = conv_transpose_geometry(
        x.shape[2:], w.shape[2:], auto_pad=auto_pad, dilations=dilations, kernel_shape=kernel_shape,
        output_padding=output_padding, output_shape=output_shape, pads=pads, strides=strides,
    )  # fmt: skip
    batch, channels = x.shape[:2]
    in_spatial = x.shape[2:]
    per_group_in = channels // group
    # products per (kernel tap, input pixel): W_g^T (M/g * prod(kernel), C/g) (*) X_g (C/g, pixels)
    weights = numerics._to_float32(w).reshape(group, per_group_in, -1).transpose(0, 2, 1)
    inputs = numerics._to_float32(x).reshape(batch, group, per_group_in, -1)
    columns = numerics._lmul_matmul_float64(weights, inputs, m, offset)
    columns = columns.reshape(batch, out_channels, *geometry.kernel, *in_spatial)
    # col2im: input pixel i and kernel tap k land on output position i*s + k*d - pad_begin.
    full = [
        max((i - 1) * s + (k - 1) * d + 1, p + o)
        for i, s, k, d, p, o in zip(
            in_spatial, geometry.strides, geometry.kernel, geometry.dilations, geometry.pads_begin,
            geometry.output, strict=True,
        )
    ]  # fmt: skip
    canvas = np.zeros((batch, out_channels, *full), dtype=np.float64)
    for tap in np.ndindex(*geometry.kernel):
        window = tuple(
            slice(k * d, k * d + (i - 1) * s + 1, s)
            for k, d, i, s in zip(tap, geometry.dilations, in_spatial, geometry.strides, strict=True)
        )
        canvas[(slice(None), slice(None), *window)] += columns[(slice(None), slice(None), *tap)]
    crop = tuple(slice(p, p + o) for p, o in zip(geometry.pads_begin, geometry.output, strict=True))
    sums = canvas[(slice(None), slice(None), *crop)]
    return _finish(sums, b, dtype, accumulate, out_channels)
