"""A numpy reference evaluator for Core ML mlprograms, so Core ML parity can be measured on Linux.

Core ML runs predictions only on macOS. This module reads the *saved* ``.mlpackage`` back into
coremltools' MIL program (``milproto.load``, weights from the package's blob file) and evaluates its
ops one by one with numpy/torch CPU kernels, following each op's MIL definition. Types follow the
program: a tensor is FP16 after a ``cast`` to fp16 or when its inputs are FP16, and every FP16 op output
is rounded to FP16, which is where on-device results differ from FP32 (accumulation inside one op is
FP32, as Core ML's CPU and GPU backends do; the Neural Engine may differ a little more).

Ops covered: those the project's vision models convert to (conv, linear, matmul, elementwise, norms,
activations, pooling, shape ops, weight dequantization, and topk / scatter_along_axis for MoE routing), and
those of its language models (int32 token-id inputs, integer add, comparisons such as ``greater_equal`` for
the wrap of negative ids, ``select``, ``gather`` of embedding rows, ``silu``).
Anything else raises :class:`UnsupportedMILOp`, and the parity gate then reports that numeric parity awaits a macOS run.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MILProgram", "UnsupportedMILOp", "load_program"]


_DTYPES = {
    "fp16": np.float16,
    "fp32": np.float32,
    "int32": np.int32,
    "int16": np.int16,
    "uint16": np.uint16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


class UnsupportedMILOp(NotImplementedError):
    """The program uses an op this evaluator does not implement."""


def load_program(path: str | Path):
    """The MIL program of a saved ``.mlpackage`` (weights read from its blob storage)."""
    with contextlib.redirect_stderr(io.StringIO()):
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load_mil_proto

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    weights = Path(path) / "Data" / "com.apple.CoreML" / "weights"
    return load_mil_proto(spec.mlProgram, spec.specificationVersion, str(weights))


def _t(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _pads(pad_type: str, pad: np.ndarray | None, spatial: int) -> list[tuple[int, int]] | str:
    if pad_type == "custom" and pad is not None:
        p = [int(v) for v in np.asarray(pad).ravel()]
        return [(p[2 * i], p[2 * i + 1]) for i in range(spatial)]
    if pad_type == "valid":
        return [(0, 0)] * spatial
    return pad_type  # "same" / "same_lower": resolved by the caller


def _same_pads(in_sizes, kernel, strides, dilations, lower=False) -> list[tuple[int, int]]:
    pads = []
    for n, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = math.ceil(n / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        pads.append((big, small) if lower else (small, big))
    return pads


class MILProgram:
    """Evaluates the ``main`` function of a MIL program on numpy inputs."""

    def __init__(self, program: Any) -> None:
        self.fn = program.functions["main"]

    @classmethod
    def from_package(cls, path: str | Path) -> MILProgram:
        return cls(load_program(path))

    def input_dtype(self, name: str) -> np.dtype:
        """The numpy type of program input ``name`` (float32 for an image, int32 for token ids)."""
        from coremltools.converters.mil.mil import types

        return np.dtype(types.nptype_from_builtin(self.fn.inputs[name].dtype))

    def op_types(self) -> set[str]:
        return {op.op_type for op in self.fn.operations}

    def unsupported(self) -> list[str]:
        """Op types of the program this evaluator cannot run."""
        return sorted(t for t in self.op_types() if not hasattr(self, f"_op_{t}") and t != "const")

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        missing = self.unsupported()
        if missing:
            raise UnsupportedMILOp(f"MIL ops without a reference implementation: {', '.join(missing)}")
        env: dict[str, np.ndarray] = {}
        for name, var in self.fn.inputs.items():
            env[var.name] = np.asarray(inputs[name], dtype=self.input_dtype(name))
        self._env = env
        for op in self.fn.operations:
            if op.op_type == "const":
                env[op.outputs[0].name] = np.asarray(op.outputs[0].val)
                continue
            args = {k: self._value(v) for k, v in op.inputs.items()}
            result = getattr(self, f"_op_{op.op_type}")(**args)
            results = result if isinstance(result, (list, tuple)) else [result]
            for var, val in zip(op.outputs, results, strict=True):
                env[var.name] = val
        return {var.name: self._output(env[var.name]) for var in self.fn.outputs}

    @staticmethod
    def _output(value: Any) -> np.ndarray:
        """A program output as the caller gets it: float32 for floats (Core ML's output type here), integer and
        bool outputs unchanged."""
        out = np.asarray(value)
        return out if out.dtype.kind in "iub" else out.astype(np.float32)

    def _value(self, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [self._value(x) for x in v]
        if v.name in self._env:
            return self._env[v.name]
        val = v.val
        return np.asarray(val) if val is not None and not isinstance(val, str) else val

    # ----- dtype helpers -----
    @staticmethod
    def _like(x: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Round ``value`` to the float type of ``x`` (FP16 programs store every intermediate in FP16)."""
        dt = np.asarray(x).dtype
        if dt == np.float16:
            return np.asarray(value, dtype=np.float32).astype(np.float16)
        return np.asarray(value, dtype=np.float32)

    @staticmethod
    def _promote(*xs: np.ndarray) -> np.dtype:
        return np.float16 if all(np.asarray(x).dtype == np.float16 for x in xs) else np.float32

    def _binary(self, x, y, fn):
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.dtype.kind in "iu" and ya.dtype.kind in "iu":  # integer arithmetic (token-id offsets) stays exact
            return fn(xa, ya).astype(xa.dtype)
        dt = self._promote(x, y)
        out = fn(np.asarray(x, np.float32), np.asarray(y, np.float32))
        return out.astype(dt) if xa.dtype.kind == "f" else out

    def _compare(self, x, y, fn) -> np.ndarray:
        """A MIL comparison: bool, computed on the operands' own values (ints exact, floats as stored)."""
        xa, ya = np.asarray(x), np.asarray(y)
        if xa.dtype.kind == "f" or ya.dtype.kind == "f":
            xa, ya = xa.astype(np.float32), ya.astype(np.float32)
        return fn(xa, ya).astype(np.bool_)

    def _op_greater_equal(self, x, y):
        return self._compare(x, y, np.greater_equal)

    def _op_greater(self, x, y):
        return self._compare(x, y, np.greater)

    def _op_less(self, x, y):
        return self._compare(x, y, np.less)

    def _op_less_equal(self, x, y):
        return self._compare(x, y, np.less_equal)

    def _op_equal(self, x, y):
        return self._compare(x, y, np.equal)

    def _op_not_equal(self, x, y):
        return self._compare(x, y, np.not_equal)

    # ----- weights -----
    def _op_constexpr_affine_dequantize(self, quantized_data, zero_point, scale, axis):
        q = np.asarray(quantized_data).astype(np.float32)
        shape = [1] * q.ndim
        scale, zero_point = np.asarray(scale), np.asarray(zero_point)
        if scale.size > 1:
            shape[int(axis)] = scale.size
        out = (
            q - zero_point.astype(np.float32).reshape(shape if zero_point.size > 1 else ())
        ) * scale.astype(np.float32).reshape(shape if scale.size > 1 else ())
        return out.astype(scale.dtype)

    def _op_constexpr_blockwise_shift_scale(self, data, scale, offset=None):
        d = np.asarray(data).astype(np.float32)
        s = np.asarray(scale)
        reps = [a // b for a, b in zip(d.shape, s.shape, strict=True)]
        sf = np.asarray(s, np.float32)
        for ax, r in enumerate(reps):
            sf = np.repeat(sf, r, axis=ax)
        if offset is not None:
            of = np.asarray(offset, np.float32)
            for ax, r in enumerate(reps):
                of = np.repeat(of, r, axis=ax)
            d = d - of
        return (d * sf).astype(s.dtype)

    def _op_cast(self, x, dtype):
        return np.asarray(x).astype(_DTYPES[str(dtype)])

    # ----- linear algebra -----
    def _op_linear(self, x, weight, bias=None):
        out = np.asarray(x, np.float32) @ np.asarray(weight, np.float32).T
        if bias is not None:
            out = out + np.asarray(bias, np.float32)
        return self._like(x, out)

    def _op_matmul(self, x, y, transpose_x=False, transpose_y=False):
        a, b = np.asarray(x, np.float32), np.asarray(y, np.float32)
        if bool(transpose_x):
            a = np.swapaxes(a, -1, -2)
        if bool(transpose_y):
            b = np.swapaxes(b, -1, -2)
        return self._like(x, a @ b)

    def _op_conv(
        self, x, weight, bias=None, strides=None, pad_type="valid", pad=None, dilations=None, groups=1
    ):
        import torch.nn.functional as F

        xs = np.asarray(x)
        spatial = xs.ndim - 2
        w = np.asarray(weight)
        strides = [int(s) for s in (strides if strides is not None else [1] * spatial)]
        dilations = [int(d) for d in (dilations if dilations is not None else [1] * spatial)]
        pads = _pads(str(pad_type), pad, spatial)
        if isinstance(pads, str):
            pads = _same_pads(xs.shape[2:], w.shape[2:], strides, dilations, lower=pads == "same_lower")
        flat = [p for pair in reversed(pads) for p in pair]
        xt = F.pad(_t(xs), flat) if any(flat) else _t(xs)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
        out = conv(xt, _t(w), None if bias is None else _t(bias), strides, 0, dilations, int(groups))
        return self._like(x, out.numpy())

    # ----- elementwise -----
    def _op_add(self, x, y):
        return self._binary(x, y, np.add)

    def _op_sub(self, x, y):
        return self._binary(x, y, np.subtract)

    def _op_mul(self, x, y):
        return self._binary(x, y, np.multiply)

    def _op_real_div(self, x, y):
        return self._binary(x, y, np.divide)

    def _op_maximum(self, x, y):
        return self._binary(x, y, np.maximum)

    def _op_minimum(self, x, y):
        return self._binary(x, y, np.minimum)

    def _op_pow(self, x, y):
        return self._binary(x, y, np.power)

    def _op_relu(self, x):
        return self._like(x, np.maximum(np.asarray(x, np.float32), 0))

    def _op_relu6(self, x):
        return self._like(x, np.clip(np.asarray(x, np.float32), 0, 6))

    def _op_clip(self, x, alpha, beta):
        return self._like(x, np.clip(np.asarray(x, np.float32), float(alpha), float(beta)))

    def _op_leaky_relu(self, x, alpha=0.01):
        xf = np.asarray(x, np.float32)
        return self._like(x, np.where(xf >= 0, xf, float(alpha) * xf))

    def _op_sigmoid(self, x):
        return self._like(x, 1.0 / (1.0 + np.exp(-np.asarray(x, np.float32))))

    def _op_sigmoid_hard(self, x, alpha=0.2, beta=0.5):
        return self._like(x, np.clip(float(alpha) * np.asarray(x, np.float32) + float(beta), 0, 1))

    def _op_silu(self, x):
        xf = np.asarray(x, np.float32)
        return self._like(x, xf / (1.0 + np.exp(-xf)))

    def _op_tanh(self, x):
        return self._like(x, np.tanh(np.asarray(x, np.float32)))

    def _op_exp(self, x):
        return self._like(x, np.exp(np.asarray(x, np.float32)))

    def _op_sqrt(self, x):
        return self._like(x, np.sqrt(np.asarray(x, np.float32)))

    def _op_rsqrt(self, x, epsilon=1e-12):
        return self._like(x, 1.0 / np.sqrt(np.asarray(x, np.float32) + float(epsilon)))

    def _op_inverse(self, x, epsilon=1e-4):
        return self._like(x, 1.0 / (np.asarray(x, np.float32) + float(epsilon)))

    def _op_erf(self, x):
        import torch

        return self._like(x, torch.erf(_t(x)).numpy())

    def _op_square(self, x):
        xf = np.asarray(x, np.float32)
        return self._like(x, xf * xf)

    def _op_abs(self, x):
        return self._like(x, np.abs(np.asarray(x, np.float32)))

    def _op_round(self, x):
        return self._like(x, np.round(np.asarray(x, np.float32)))

    def _op_floor(self, x):
        return self._like(x, np.floor(np.asarray(x, np.float32)))

    def _op_gelu(self, x, mode="EXACT"):
        import torch

        xf = _t(x)
        mode = str(mode)
        if mode == "TANH_APPROXIMATION":
            out = torch.nn.functional.gelu(xf, approximate="tanh")
        elif mode == "SIGMOID_APPROXIMATION":
            out = xf * torch.sigmoid(1.702 * xf)
        else:
            out = torch.nn.functional.gelu(xf)
        return self._like(x, out.numpy())

    def _op_select(self, cond, a, b):
        return np.where(np.asarray(cond).astype(bool), a, b)

    # ----- normalisation / softmax -----
    def _op_softmax(self, x, axis=-1):
        xf = np.asarray(x, np.float32)
        e = np.exp(xf - xf.max(axis=int(axis), keepdims=True))
        return self._like(x, e / e.sum(axis=int(axis), keepdims=True))

    def _op_layer_norm(self, x, axes=None, gamma=None, beta=None, epsilon=1e-5):
        xf = np.asarray(x, np.float32)
        ax = tuple(int(a) for a in np.asarray(axes).ravel()) if axes is not None else (-1,)
        mean = xf.mean(axis=ax, keepdims=True)
        var = ((xf - mean) ** 2).mean(axis=ax, keepdims=True)
        out = (xf - mean) / np.sqrt(var + float(epsilon))
        if gamma is not None:
            out = out * np.asarray(gamma, np.float32)
        if beta is not None:
            out = out + np.asarray(beta, np.float32)
        return self._like(x, out)

    def _op_batch_norm(self, x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
        xf = np.asarray(x, np.float32)
        shape = [1, -1] + [1] * (xf.ndim - 2)
        out = (xf - np.asarray(mean, np.float32).reshape(shape)) / np.sqrt(
            np.asarray(variance, np.float32).reshape(shape) + float(epsilon)
        )
        if gamma is not None:
            out = out * np.asarray(gamma, np.float32).reshape(shape)
        if beta is not None:
            out = out + np.asarray(beta, np.float32).reshape(shape)
        return self._like(x, out)

    def _op_instance_norm(self, x, gamma=None, beta=None, epsilon=1e-5):
        xf = np.asarray(x, np.float32)
        ax = tuple(range(2, xf.ndim))
        mean = xf.mean(axis=ax, keepdims=True)
        var = ((xf - mean) ** 2).mean(axis=ax, keepdims=True)
        out = (xf - mean) / np.sqrt(var + float(epsilon))
        shape = [1, -1] + [1] * (xf.ndim - 2)
        if gamma is not None:
            out = out * np.asarray(gamma, np.float32).reshape(shape)
        if beta is not None:
            out = out + np.asarray(beta, np.float32).reshape(shape)
        return self._like(x, out)

    # ----- reductions / pooling -----
    def _reduce(self, fn, x, axes=None, keep_dims=False):
        ax = None if axes is None else tuple(int(a) for a in np.asarray(axes).ravel())
        return self._like(x, fn(np.asarray(x, np.float32), axis=ax, keepdims=bool(keep_dims)))

    def _op_reduce_mean(self, x, axes=None, keep_dims=False):
        return self._reduce(np.mean, x, axes, keep_dims)

    def _op_reduce_sum(self, x, axes=None, keep_dims=False):
        return self._reduce(np.sum, x, axes, keep_dims)

    def _op_reduce_max(self, x, axes=None, keep_dims=False):
        return self._reduce(np.max, x, axes, keep_dims)

    def _pool(
        self,
        kind,
        x,
        kernel_sizes,
        strides,
        pad_type,
        pad=None,
        exclude_padding_from_average=False,
        ceil_mode=False,
    ):
        import torch.nn.functional as F

        xs = np.asarray(x)
        k = [int(v) for v in np.asarray(kernel_sizes).ravel()]
        s = [int(v) for v in np.asarray(strides).ravel()]
        pads = _pads(str(pad_type), pad, len(k))
        if isinstance(pads, str):
            pads = _same_pads(xs.shape[2:], k, s, [1] * len(k), lower=pads == "same_lower")
        flat = [p for pair in reversed(pads) for p in pair]
        xt = _t(xs)
        if kind == "max":
            xt = F.pad(xt, flat, value=-np.inf) if any(flat) else xt
            out = F.max_pool2d(xt, k, s, 0, ceil_mode=bool(ceil_mode))
        else:
            if any(flat) and bool(exclude_padding_from_average):
                ones = F.pad(_t(np.ones_like(xs[:1, :1], np.float32)), flat)
                total = F.avg_pool2d(F.pad(xt, flat), k, s, 0, ceil_mode=bool(ceil_mode))
                frac = F.avg_pool2d(ones, k, s, 0, ceil_mode=bool(ceil_mode))
                out = total / frac
            else:
                out = F.avg_pool2d(F.pad(xt, flat) if any(flat) else xt, k, s, 0, ceil_mode=bool(ceil_mode))
        return self._like(x, out.numpy())

    def _op_avg_pool(
        self,
        x,
        kernel_sizes,
        strides,
        pad_type,
        pad=None,
        exclude_padding_from_average=False,
        ceil_mode=False,
    ):
        return self._pool(
            "avg", x, kernel_sizes, strides, pad_type, pad, exclude_padding_from_average, ceil_mode
        )

    def _op_max_pool(self, x, kernel_sizes, strides, pad_type, pad=None, ceil_mode=False):
        return self._pool("max", x, kernel_sizes, strides, pad_type, pad, False, ceil_mode)

    # ----- shape ops -----
    def _op_reshape(self, x, shape):
        return np.reshape(x, [int(v) for v in np.asarray(shape).ravel()])

    def _op_transpose(self, x, perm):
        return np.transpose(x, [int(v) for v in np.asarray(perm).ravel()])

    def _op_squeeze(self, x, axes=None):
        if axes is None:
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(int(a) for a in np.asarray(axes).ravel()))

    def _op_expand_dims(self, x, axes):
        out = np.asarray(x)
        for a in sorted(int(v) for v in np.asarray(axes).ravel()):
            out = np.expand_dims(out, a)
        return out

    def _op_flatten2d(self, x, axis=1):
        xs = np.asarray(x)
        return xs.reshape(int(np.prod(xs.shape[: int(axis)])), -1)

    def _op_concat(self, values, axis, interleave=False):
        if bool(interleave):
            raise UnsupportedMILOp("concat with interleave=True")
        return np.concatenate([np.asarray(v) for v in values], axis=int(axis))

    def _op_split(self, x, axis, num_splits=None, split_sizes=None):
        xs = np.asarray(x)
        if split_sizes is not None:
            idx = np.cumsum([int(v) for v in np.asarray(split_sizes).ravel()])[:-1]
            return np.split(xs, idx, axis=int(axis))
        return np.split(xs, int(num_splits), axis=int(axis))

    def _op_tile(self, x, reps):
        return np.tile(x, [int(v) for v in np.asarray(reps).ravel()])

    def _op_gather(self, x, indices, axis=0, validate_indices=False, batch_dims=0):
        return np.take(np.asarray(x), np.asarray(indices).astype(np.int64), axis=int(axis))

    def _op_topk(
        self, x, k=1, axis=-1, ascending=False, sort=True, return_indices=True, output_indices_dtype="int32"
    ):
        # MoE routing (edge_moe_vit): the k largest along ``axis``; ties go to the lower index
        xs = np.asarray(x)
        ax = int(axis)
        key = xs.astype(np.float32) if bool(ascending) else -xs.astype(np.float32)
        idx = np.take(np.argsort(key, axis=ax, kind="stable"), np.arange(int(k)), axis=ax)
        values = np.take_along_axis(xs, idx, axis=ax)
        if not bool(return_indices):
            return values
        return values, idx.astype(_DTYPES[str(output_indices_dtype)])

    def _op_scatter_along_axis(self, data, indices, updates, axis=0, mode="add", validate_indices=False):
        out = np.array(data, copy=True)
        ax = int(axis) % out.ndim
        idx = np.asarray(indices).astype(np.int64)
        idx = np.where(idx < 0, idx + out.shape[ax], idx)
        upd = np.asarray(updates).astype(out.dtype)
        if str(mode) == "update":
            np.put_along_axis(out, idx, upd, axis=ax)
            return out
        combine = {
            "add": np.add,
            "sub": np.subtract,
            "mul": np.multiply,
            "div": np.divide,
            "max": np.maximum,
            "min": np.minimum,
        }[str(mode)]
        grid = list(np.indices(idx.shape))
        grid[ax] = idx
        combine.at(out, tuple(grid), upd)  # unbuffered: repeated indices combine, as MIL defines
        return out

    def _op_slice_by_size(self, x, begin, size):
        xs = np.asarray(x)
        idx = tuple(
            slice(int(b), None if int(s) == -1 else int(b) + int(s))
            for b, s in zip(np.asarray(begin).ravel(), np.asarray(size).ravel(), strict=True)
        )
        return xs[idx]

    def _op_slice_by_index(
        self, x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None
    ):
        xs = np.asarray(x)
        n = xs.ndim
        begin = np.asarray(begin).ravel()
        end = np.asarray(end).ravel()
        stride = np.asarray(stride).ravel() if stride is not None else np.ones(n, int)
        bm = np.asarray(begin_mask).ravel() if begin_mask is not None else np.zeros(n, bool)
        em = np.asarray(end_mask).ravel() if end_mask is not None else np.zeros(n, bool)
        sm = np.asarray(squeeze_mask).ravel() if squeeze_mask is not None else np.zeros(n, bool)
        idx = []
        for i in range(n):
            if sm[i]:
                idx.append(int(begin[i]))
                continue
            b = None if bm[i] else int(begin[i])
            e = None if em[i] else int(end[i])
            idx.append(slice(b, e, int(stride[i])))
        return xs[tuple(idx)]

    def _op_pad(self, x, pad, mode="constant", constant_val=0.0):
        xs = np.asarray(x)
        p = [int(v) for v in np.asarray(pad).ravel()]
        k = len(p) // 2
        width = [(0, 0)] * (xs.ndim - k) + [(p[2 * i], p[2 * i + 1]) for i in range(k)]
        if str(mode) == "constant":
            return np.pad(xs, width, constant_values=float(constant_val)).astype(xs.dtype)
        return np.pad(xs, width, mode={"reflect": "reflect", "replicate": "edge"}[str(mode)])

    def _op_shape(self, x):
        return np.asarray(np.asarray(x).shape, np.int32)
