"""Structural reparameterization: BN folding, branch merging, and the reparameterizable conv blocks.

Train form -> deploy form, in eval mode with the running BN statistics (RepVGG / MobileOne):

- BN after a conv folds into it: ``t = gamma / sqrt(var + eps)``, ``W' = W * t``,
  ``b' = beta + (b - mean) * t``.
- A 1x1 branch is zero-padded to k x k; a BN-only identity branch is a k x k kernel with a 1 at the centre tap
  of each channel's own input (respecting groups), then folded like any conv.
- A grouped 1x1 branch becomes a block-diagonal dense 1x1 weight (gMLP's multi-group branches).
- Parallel branches add, so their kernels and biases add.

Every block here has ``reparameterize()`` (in place, idempotent) and a ``deployed`` flag. Branch modules live
in attributes named ``branches``, ``scale_branch`` and ``identity_branch``, which reparameterization deletes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from numbers import Integral

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ConvBN",
    "RepConv",
    "MultiGroupConv1x1",
    "fuse_bn",
    "fuse_bn_into_linear",
    "identity_kernel",
    "grouped_to_dense",
    "make_act",
    "set_weight_bias",
    "check_positive_ints",
    "check_input",
    "param_dtype",
    "format_shape",
    "static_shape",
]


# ----------------------------------------------------------------------------------------------------
# Pure fusion math (float64 internally: folding is done once, so it can afford to be exact)


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(s, t)`` with ``bn(x) == x * s + t`` in eval mode."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - mean * s


def fuse_bn(
    kernel: torch.Tensor, bias: torch.Tensor | None, bn: nn.modules.batchnorm._BatchNorm
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold ``bn`` into the conv (``kernel``, ``bias``) that feeds it; returns float64 (kernel', bias')."""
    s, t = _bn_scale_shift(bn)
    k = kernel.double() * s.reshape(-1, *([1] * (kernel.dim() - 1)))
    b = t if bias is None else t + bias.double() * s
    return k, b


def fuse_bn_into_linear(
    bn: nn.modules.batchnorm._BatchNorm, linear: nn.Linear
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a BN that *precedes* ``linear`` (BN over the linear's input features) into it.

    ``linear(bn(x)) = W (x*s + t) + b = (W*s) x + (b + W t)``; returns float64 ``(W', b')``.
    """
    s, t = _bn_scale_shift(bn)
    w = linear.weight.double()
    b = linear.bias.double() if linear.bias is not None else w.new_zeros(w.shape[0])
    return w * s.unsqueeze(0), b + w @ t


def identity_kernel(
    channels: int, groups: int, kernel_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The float64 k x k kernel (channels, channels/groups, k, k) of an identity map under ``groups``.

    ``device``: where to build it (the weights' device, so it adds to them on a GPU or ``meta``).
    """
    in_per_group = channels // groups
    k = torch.zeros(channels, in_per_group, kernel_size, kernel_size, dtype=torch.float64, device=device)
    centre = kernel_size // 2
    idx = torch.arange(channels, device=device)
    k[idx, idx % in_per_group, centre, centre] = 1.0
    return k


def grouped_to_dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """Expand a grouped conv weight (Cout, Cin/g, k, k) into the equivalent dense (Cout, Cin, k, k) weight."""
    if groups == 1:
        return weight
    cout, cin_g = weight.shape[:2]
    out_g = cout // groups
    dense = weight.new_zeros(cout, cin_g * groups, *weight.shape[2:])
    for g in range(groups):
        dense[g * out_g : (g + 1) * out_g, g * cin_g : (g + 1) * cin_g] = weight[g * out_g : (g + 1) * out_g]
    return dense


def make_act(act: str | None) -> nn.Module:
    """Activation by name: ``relu``, ``relu6``, ``gelu`` (exact; approximations go through edgeattn.approx),
    ``hardswish`` or ``None``/``identity``."""
    table = {"relu": nn.ReLU, "relu6": nn.ReLU6, "gelu": nn.GELU, "hardswish": nn.Hardswish}
    if act is None or act == "identity":
        return nn.Identity()
    if act not in table:
        raise ValueError(f"unknown activation {act!r}; allowed: {', '.join(sorted(table))}, identity")
    return table[act]()


def check_positive_ints(where: str, **values: object) -> None:
    """Raise ``ValueError("{where}: {name} must be a positive integer, got ...")`` unless every value is an
    integer > 0 (``bool`` refused). A float or string channel count would otherwise fail deep inside torch."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
            raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")


def format_shape(shape: Sequence[object]) -> str:
    """``(N, 3, H, W)`` / ``(3, 32, 32)``: a shape as a user writes it (``(5,)`` for one dim)."""
    inner = ", ".join(str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def static_shape(x: torch.Tensor) -> tuple[int, ...]:
    """``x``'s sizes as Python ints, for input checks.

    Under ``torch.jit.trace`` sizes are 0-dim tensors; a check reads them as constants on purpose (it only
    raises, the graph never depends on it), so the tracer's warning about that is silenced here.
    """
    if not torch.jit.is_tracing():
        return tuple(x.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return tuple(int(d) for d in x.shape)


def param_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s first floating-point parameter (``None`` if it has none): the input dtype its
    layers compute in, for :func:`check_input`'s ``dtype``."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled for ``device_type``; False where torch has no autocast (the meta device)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return False


def check_input(
    where: str, x: object, shape: Sequence[int | str], what: str = "input", dtype: torch.dtype | None = None
) -> None:
    """Raise ``ValueError("{where} expects {what} of shape (N, 3, H, W), got (3, 32, 32)")`` unless ``x`` is a
    floating-point tensor that fits ``shape`` (and has ``dtype``, when given).

    ``shape`` entries: an int must match exactly; a name (``"N"``, ``"H"``) takes any size; a leading ``"..."``
    takes any number of leading dims. Only the rank and sizes fixed at construction are compared, never the
    batch or another axis an exporter may make dynamic: the check is Python on static shapes, so traced and
    exported graphs do not change.

    ``dtype``: the dtype of the caller's weights; a float64 or bfloat16 input to a float32 layer would otherwise
    fail inside torch. Not compared under autocast, which casts inputs to the weights' precision itself.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{where} expects {what} as a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{where} expects a floating-point {what}, got {x.dtype}")
    if dtype is not None and x.dtype != dtype and not _autocast_enabled(x.device.type):
        want, got_dtype = _dtype_name(dtype), _dtype_name(x.dtype)
        raise ValueError(
            f"{where} expects a {want} {what} (its parameters' dtype), got {got_dtype}: convert the input "
            f"with .to(torch.{want}) or the model with .to(torch.{got_dtype})"
        )
    got = static_shape(x)
    variadic = len(shape) > 0 and shape[0] == "..."
    fixed = tuple(shape[1:]) if variadic else tuple(shape)
    rank_ok = len(got) >= len(fixed) if variadic else len(got) == len(fixed)
    tail = got[len(got) - len(fixed) :] if rank_ok else ()
    if not rank_ok or any(isinstance(want, int) and size != want for want, size in zip(fixed, tail, strict=True)):
        raise ValueError(f"{where} expects {what} of shape {format_shape(shape)}, got {format_shape(got)}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_channels(name: str, in_ch: int, out_ch: int, groups: int) -> None:
    for value in (in_ch, out_ch, groups):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError(
                f"{name}: channels and groups must be integers (got {in_ch!r}, {out_ch!r}, groups={groups!r})"
            )
    if in_ch <= 0 or out_ch <= 0 or groups <= 0:
        raise ValueError(
            f"{name}: channels and groups must be positive (got {in_ch}, {out_ch}, groups={groups})"
        )
    if in_ch % groups or out_ch % groups:
        raise ValueError(
            f"{name}: in_channels={in_ch} and out_channels={out_ch} must both be divisible by groups={groups}"
        )


def set_weight_bias(layer: nn.Conv2d | nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> None:
    """Overwrite ``layer``'s weight and bias in place (adding a bias parameter if it had none).

    The module object is kept, so whatever wraps or subclasses it (e.g. a quantized layer) stays in place.
    """
    ref = layer.weight
    if tuple(weight.shape) != tuple(ref.shape):
        raise ValueError(f"fused weight shape {tuple(weight.shape)} != layer weight shape {tuple(ref.shape)}")
    with torch.no_grad():
        ref.copy_(weight.to(ref.dtype))
        if layer.bias is None:
            # a frozen layer stays frozen: its new bias follows the weight
            layer.bias = nn.Parameter(bias.to(device=ref.device, dtype=ref.dtype), requires_grad=ref.requires_grad)
        else:
            layer.bias.copy_(bias.to(ref.dtype))


# ----------------------------------------------------------------------------------------------------
# Blocks


class ConvBN(nn.Module):
    """``act(BN(conv(x)))`` with a bias-free conv; deploys to ``act(conv(x))`` with the BN folded in."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = None,
    ) -> None:
        super().__init__()
        _check_channels("ConvBN", in_channels, out_channels, groups)
        check_positive_ints("ConvBN", kernel_size=kernel_size, stride=stride)
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = make_act(act)
        self.in_channels = in_channels
        self.deployed = False

    def extra_repr(self) -> str:
        return f"deployed={self.deployed}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        check_input("ConvBN", x, ("N", self.in_channels, "H", "W"), dtype=param_dtype(self))
        if self.deployed:
            return self.act(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 (kernel, bias) of conv+BN as one conv (either form)."""
        if self.deployed:
            return self.conv.weight.double(), self.conv.bias.double()
        return fuse_bn(self.conv.weight, self.conv.bias, self.bn)

    def reparameterize(self) -> None:
        """Fold the BN into the conv (in place)."""
        if self.deployed:
            return
        kernel, bias = self.fused_kernel_bias()
        set_weight_bias(self.conv, kernel, bias)
        del self.bn
        self.deployed = True


class RepConv(nn.Module):
    """MobileOne/RepVGG-style reparameterizable conv: ``act(sum of branches)``.

    Train form: ``num_branches`` over-parameterized k x k conv-BN branches, a 1x1 conv-BN "scale" branch
    (when k > 1 and ``use_scale``) and a BN-only identity branch (when in == out, stride 1 and
    ``use_identity``). Deploy form: one k x k conv with bias, then the activation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        num_branches: int = 1,
        use_scale: bool = True,
        use_identity: bool = True,
        act: str | None = "relu",
    ) -> None:
        super().__init__()
        _check_channels("RepConv", in_channels, out_channels, groups)
        check_positive_ints("RepConv", kernel_size=kernel_size, stride=stride, num_branches=num_branches)
        if kernel_size % 2 == 0:
            raise ValueError(f"RepConv: kernel_size must be odd, got {kernel_size}")
        if num_branches < 1:
            raise ValueError(f"RepConv: num_branches must be >= 1, got {num_branches}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.branches = nn.ModuleList(
            [ConvBN(in_channels, out_channels, kernel_size, stride, groups) for _ in range(num_branches)]
        )
        self.scale_branch = (
            ConvBN(in_channels, out_channels, 1, stride, groups) if kernel_size > 1 and use_scale else None
        )
        self.identity_branch = (
            nn.BatchNorm2d(out_channels)
            if use_identity and in_channels == out_channels and stride == 1
            else None
        )
        self.act = make_act(act)
        self.deployed = False

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"groups={self.groups}, deployed={self.deployed}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H', W')."""
        check_input("RepConv", x, ("N", self.in_channels, "H", "W"), dtype=param_dtype(self))
        if self.deployed:
            return self.act(self.reparam_conv(x))
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        if self.scale_branch is not None:
            out = out + self.scale_branch(x)
        if self.identity_branch is not None:
            out = out + self.identity_branch(x)
        return self.act(out)

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 (kernel, bias) of the sum of all branches as one k x k conv."""
        k = self.kernel_size
        parts = [b.fused_kernel_bias() for b in self.branches]
        if self.scale_branch is not None:
            k1, b1 = self.scale_branch.fused_kernel_bias()
            pad = k // 2
            parts.append((F.pad(k1, [pad, pad, pad, pad]), b1))
        if self.identity_branch is not None:
            ident = identity_kernel(self.out_channels, self.groups, k, device=parts[0][0].device)
            parts.append(fuse_bn(ident, None, self.identity_branch))
        kernel = sum(p[0] for p in parts)
        bias = sum(p[1] for p in parts)
        return kernel, bias

    def reparameterize(self) -> None:
        """Merge every branch into one k x k conv with bias (in place)."""
        if self.deployed:
            return
        kernel, bias = self.fused_kernel_bias()
        # The first k x k branch's conv has exactly the deploy conv's geometry: reuse it.
        conv = self.branches[0].conv
        set_weight_bias(conv, kernel, bias)
        self.reparam_conv = conv
        del self.branches, self.scale_branch, self.identity_branch
        self.deployed = True


class MultiGroupConv1x1(nn.Module):
    """Multi-group reparameterized 1x1 conv (gMLP's building block).

    Train form: parallel 1x1 conv-BN branches with different group counts (e.g. 1, 2, 4); a grouped branch
    learns block-diagonal channel mixing, which regularises and eases optimisation. Deploy form: one dense
    1x1 conv with bias (each grouped weight expanded to block-diagonal dense, BN folded, all summed).
    """

    def __init__(self, in_channels: int, out_channels: int, groups: Sequence[int] = (1, 2, 4)) -> None:
        super().__init__()
        groups = tuple(dict.fromkeys(int(g) for g in groups))
        if not groups:
            raise ValueError("MultiGroupConv1x1: groups must name at least one group count")
        for g in groups:
            _check_channels("MultiGroupConv1x1", in_channels, out_channels, g)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.branches = nn.ModuleList([ConvBN(in_channels, out_channels, 1, 1, g) for g in groups])
        self.deployed = False

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, groups={self.groups}, deployed={self.deployed}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, out_channels, H, W)."""
        check_input("MultiGroupConv1x1", x, ("N", self.in_channels, "H", "W"), dtype=param_dtype(self))
        if self.deployed:
            return self.reparam_conv(x)
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out

    def fused_kernel_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 dense (kernel, bias) of the sum of all group branches."""
        device = self.branches[0].conv.weight.device  # accumulate where the weights are (GPU, meta ...)
        kernel = torch.zeros(self.out_channels, self.in_channels, 1, 1, dtype=torch.float64, device=device)
        bias = torch.zeros(self.out_channels, dtype=torch.float64, device=device)
        for g, branch in zip(self.groups, self.branches, strict=True):
            k, b = branch.fused_kernel_bias()
            kernel += grouped_to_dense(k, g)
            bias += b
        return kernel, bias

    def reparameterize(self) -> None:
        """Merge every group branch into one dense 1x1 conv with bias (in place)."""
        if self.deployed:
            return
        kernel, bias = self.fused_kernel_bias()
        # A dense (groups == 1) branch, wherever it sits, already has the deploy geometry: reuse it.
        dense = [b.conv for b in self.branches if b.conv.groups == 1]
        if dense:
            conv = dense[0]
        else:
            ref = self.branches[0].conv.weight
            conv = nn.Conv2d(
                self.in_channels, self.out_channels, 1, bias=True, device=ref.device, dtype=ref.dtype
            ).requires_grad_(ref.requires_grad)  # a frozen block stays frozen
        set_weight_bias(conv, kernel, bias)
        self.reparam_conv = conv
        del self.branches
        self.deployed = True
