"""`quantize_model`: swap a float model's layers and quant points for brevitas modules.

* ``nn.Linear`` -> ``QuantLinear``, ``nn.Conv1d/2d`` -> ``QuantConv1d/2d`` (weights quantized, bias float);
* ``nn.Identity`` quant points (``in_quant``, ``q_quant``, ``k_quant``, ``v_quant``, ``attn_quant``,
  ``proj_in_quant``, ``hidden_quant``, any ``*_quant``) -> ``QuantIdentity`` (``attn_quant`` gets the softmax
  preset); ``logits_probe`` stays float (it only feeds the EdgeQAT distribution loss);
* a Linear/Conv whose parent block has no quant points of its own (stems, heads, conv stages) also quantizes its
  input, so the exported graph is integer end to end; inside a block with quant points the points do that job.

Apply it to the deploy (reparameterized) form, so the quantized weights are exactly what gets exported. The copy
comes back in eval mode, fake-quantizing; its activation scales still need calibration
(:func:`edgeattn.quant.ptq.calibrate`) or QAT.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from typing import Any

import torch
from brevitas import nn as qnn
from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling
from brevitas.core.zero_point import ParameterFromRuntimeZeroPoint
from brevitas.nn.mixin.base import QuantLayerMixin
from brevitas.proxy.quant_proxy import QuantProxyFromInjector
from edgeattn.quant import presets
from edgeattn.quant.config import QuantConfig, is_bit_setting, matches_module
from torch import nn

from edgeattn.errors import EdgeAttnError

LOGITS_PROBE = "logits_probe"
SOFTMAX_POINT = "attn_quant"
QUANT_POINTS = ("in_quant", "q_quant", "k_quant", "v_quant", "attn_quant", "proj_in_quant", "hidden_quant")
ATTENTION_POINTS = ("q_quant", "k_quant", "v_quant", "attn_quant")
SWAPPED = (nn.Linear, nn.Conv1d, nn.Conv2d)  # the layer types (exact types) swapped for brevitas ones
# weighted torch layers that have no swap here and so stay float (norms and embeddings stay float by design)
UNSUPPORTED = (
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.RNNBase,
    nn.RNNCellBase,
    nn.Bilinear,
)


def is_quant_point(name: str, module: nn.Module) -> bool:
    """True for an ``nn.Identity`` whose attribute name marks it as a quant point (``*_quant``)."""
    leaf = name.rsplit(".", 1)[-1]
    return isinstance(module, nn.Identity) and leaf.endswith("_quant")


def resolve_config(config_or_profile: Any) -> QuantConfig:
    """A :class:`QuantConfig` from a config, a mapping, a DeviceProfile or a profile name/path."""
    if isinstance(config_or_profile, QuantConfig):
        return config_or_profile
    if isinstance(config_or_profile, dict):
        return QuantConfig.parse(config_or_profile)
    try:
        return QuantConfig.from_profile(config_or_profile)
    except EdgeAttnError:
        if is_bit_setting(config_or_profile):
            raise EdgeAttnError(
                f"'{config_or_profile}' is a bit setting, not a device profile: pass "
                f"QuantConfig().with_bits('{config_or_profile}') or "
                f"QuantConfig.from_profile(name).with_bits('{config_or_profile}')"
            ) from None
        raise


def quantize_model(model: nn.Module, config_or_profile: Any = None, *, inplace: bool = False) -> nn.Module:
    """Quantized copy of ``model`` (brevitas layers and quant points), in eval mode.

    ``config_or_profile``: a :class:`QuantConfig`, a dict of its fields, a ``DeviceProfile`` or a profile
    name/path (``"intel-avx2-openvino"`` -> 7-bit weights). ``None`` means the default W8A8 config.
    """
    if not isinstance(model, nn.Module):
        raise EdgeAttnError(
            f"quantize_model takes an nn.Module, got {type(model).__name__} {model!r:.40}; build a registry model "
            "first: edgeattn.models.create_model(name)"
        )
    config = QuantConfig() if config_or_profile is None else resolve_config(config_or_profile)
    _refuse_quantized(model)
    qmodel = model if inplace else copy.deepcopy(model)
    blocks_with_points = {
        name.rsplit(".", 1)[0] if "." in name else "" for name, m in qmodel.named_modules() if is_quant_point(name, m)
    }
    replacements: list[tuple[nn.Module, nn.Module]] = []
    quantized: list[str] = []
    kept_float: dict[str, str] = {}  # name -> the setting that keeps this layer or quant point in float
    for name, module in qmodel.named_modules():
        if not name or not (type(module) in SWAPPED or is_quant_point(name, module)):
            continue
        why = _why_float(qmodel, name, module, config)
        if why is not None:
            kept_float[name] = why
            continue
        quantized.append(name)
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        if type(module) in SWAPPED:
            replacements.append((module, _quant_layer(module, name, config, parent not in blocks_with_points)))
        else:
            # brevitas builds quantizers as float32 on the CPU: they follow the block they sit in (float64, GPU)
            home = float_home(qmodel.get_submodule(parent)) or float_home(qmodel)
            replacements.append((module, _quant_point(name.rsplit(".", 1)[-1], name, config, home)))
    _replace_everywhere(qmodel, {id(old): new for old, new in replacements})
    _warn_unquantized(qmodel, config)
    _warn_overrides(config, quantized, kept_float)
    init_weight_scales(qmodel)
    follow_home_on_load(qmodel)
    if config.token_adaptive:
        from edgeattn.quant.adaptive import enable_token_adaptive

        enable_token_adaptive(qmodel, config)
    qmodel.quant_config = config  # type: ignore[assignment]  # read by checkpoint/export code
    return qmodel.eval()


FLOAT_BY_CONFIG = "float_layers or a float override"  # the user's own choice, unlike the profile's switches


def _why_float(model: nn.Module, name: str, module: nn.Module, config: QuantConfig) -> str | None:
    """The config setting that leaves a swappable layer or quant point in float, or ``None`` to quantize it."""
    if config.is_float(name):
        return FLOAT_BY_CONFIG
    if type(module) is nn.Linear:
        return None if config.quantize_linear else "quantize_linear is false"
    if type(module) in SWAPPED:
        return None
    parent, leaf = name.rsplit(".", 1) if "." in name else ("", name)
    if leaf in ATTENTION_POINTS and not config.quantize_attention:
        return "quantize_attention is false"
    if not config.quantize_linear and _feeds_only_linear(model.get_submodule(parent), leaf):
        return "quantize_linear is false"
    return None


def _warn_overrides(config: QuantConfig, quantized: list[str], kept_float: dict[str, str]) -> None:
    """Warn, naming the pattern, about an ``overrides`` entry whose bits do not reach the model as written: weight
    bits above ``weight_max_bits`` (capped), or bits on layers that all stay float (ignored)."""
    cap = config.weight_max_bits
    for pat, o in config.overrides.items():
        if o.float or (o.weight_bits is None and o.act_bits is None):
            continue
        covered = [n for n in quantized if matches_module(n, pat)]
        if covered and cap is not None and o.weight_bits is not None and o.weight_bits > cap:
            warnings.warn(
                f"quantize_model: overrides pattern '{pat}' asks for {o.weight_bits}-bit weights; capped at "
                f"weight_max_bits {cap} (x86 without VNNI: wider weights saturate its int8 kernels' 16-bit sums)",
                stacklevel=3,
            )
        kept = {n: why for n, why in kept_float.items() if matches_module(n, pat)}
        reasons = sorted(set(kept.values()))
        if not covered and reasons:
            warnings.warn(
                f"quantize_model: overrides pattern '{pat}' is ignored: every layer and quant point it covers stays "
                f"float ({'; '.join(reasons)})",
                stacklevel=3,
            )
        # part of the subtree kept float by the profile (not by the user's own float_layers): say how much is left
        by_profile = {n: why for n, why in kept.items() if why != FLOAT_BY_CONFIG}
        if covered and by_profile:
            warnings.warn(
                f"quantize_model: overrides pattern '{pat}' reaches {len(covered)} of the "
                f"{len(covered) + len(kept)} layers and quant points it covers; {len(by_profile)} stay float "
                f"({'; '.join(sorted(set(by_profile.values())))}, e.g. '{min(by_profile)}')",
                stacklevel=3,
            )


def _refuse_quantized(model: nn.Module) -> None:
    """A model that already holds brevitas layers would come back unchanged (nothing float is left to swap), so
    quantizing it again, at new bits say, would silently keep the old ones."""
    done = [name or type(model).__name__ for name, m in model.named_modules() if isinstance(m, QuantLayerMixin)]
    if done:
        raise EdgeAttnError(
            f"quantize_model: the model is already quantized ({len(done)} brevitas layer(s), e.g. '{done[0]}'); "
            "pass the float model, e.g. the deploy form before quantize_model or ptq"
        )


def _replace_everywhere(root: nn.Module, new_for: dict[int, nn.Module]) -> None:
    """Put ``new_for[id(m)]`` wherever module ``m`` is a child, under every name it has.

    ``named_modules`` lists a module registered twice (``self.dec = self.enc``) once; replacing it by that one name
    would leave the other pointing at the float layer.
    """
    for parent in list(root.modules()):
        for leaf, child in list(parent._modules.items()):
            if child is not None and id(child) in new_for:
                setattr(parent, leaf, new_for[id(child)])


def _unsupported_layers(model: nn.Module, config: QuantConfig, mha: list[str]) -> list[str]:
    """``"name (Type)"`` of the weighted layers ``quantize_model`` has no brevitas swap for and the config does not
    leave in float on purpose. Norms are float by design, and so are embeddings (lookup tables fed integer ids);
    ``nn.MultiheadAttention`` has its own warning."""
    found = []
    for name, m in model.named_modules():
        if not name or isinstance(m, QuantLayerMixin) or config.is_float(name):
            continue
        if any(matches_module(name, n) for n in mha):
            continue
        # a subclass of a swapped type is skipped too: the swap checks the exact type (its forward may differ)
        subclass = isinstance(m, SWAPPED) and type(m) not in SWAPPED
        if subclass and isinstance(m, nn.Linear) and not config.quantize_linear:
            continue
        if subclass or isinstance(m, UNSUPPORTED):
            found.append(f"{name} ({type(m).__name__})")
    return found


def _warn_unquantized(model: nn.Module, config: QuantConfig) -> None:
    """Warn about what ``quantize_model`` leaves in float without being asked to: ``nn.MultiheadAttention``
    (its input projection is a bare parameter and its attention runs inside one torch function), weighted layers
    without a quantized version (:data:`UNSUPPORTED`), and ``float_layers``/``overrides`` patterns that name no
    module (a typo would quantize the layer meant)."""
    mha = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    unsupported = _unsupported_layers(model, config, mha)
    if unsupported:
        more = ", ..." if len(unsupported) > 5 else ""
        warnings.warn(
            f"quantize_model: {len(unsupported)} layer(s) with weights have no quantized version and stay float: "
            f"{', '.join(unsupported[:5])}{more}; only nn.Linear, nn.Conv1d and nn.Conv2d are quantized (list "
            "the others in float_layers to silence this)",
            stacklevel=3,
        )
    if mha:
        warnings.warn(
            f"quantize_model: {len(mha)} nn.MultiheadAttention module(s) stay float, projections and attention "
            f"included ({', '.join(mha[:3])}{', ...' if len(mha) > 3 else ''}); write the attention with nn.Linear "
            "layers (and q_quant/k_quant/v_quant/attn_quant nn.Identity points) to quantize it",
            stacklevel=3,
        )
    names = [n for n, _ in model.named_modules() if n]
    patterns = [("float_layers", p) for p in config.float_layers] + [("overrides", p) for p in config.overrides]
    for where, pat in patterns:
        if not any(matches_module(n, pat) for n in names):
            warnings.warn(f"quantize_model: {where} pattern '{pat}' matches no module of the model", stacklevel=3)


def _feeds_only_linear(block: nn.Module, point: str) -> bool:
    """True if quant point ``point`` of ``block`` feeds nothing but ``nn.Linear`` layers.

    Blocks name the layers each quant point feeds in ``quant_point_consumers``; a point a block does not
    list is assumed to feed something else, so it stays quantized.
    """
    consumers = getattr(block, "quant_point_consumers", {}).get(point)
    if not consumers:
        return False
    return all(type(getattr(block, c, None)) is nn.Linear for c in consumers)


@torch.no_grad()
def init_weight_scales(model: nn.Module) -> None:
    """Initialise every learned weight scale from its weights now.

    brevitas does it lazily at the first weight-quantized forward; calibration runs with weight quantization off, so
    without this a calibrated model could be saved with the placeholder scale 1.0.
    """
    for module in model.modules():
        if isinstance(module, (qnn.QuantLinear, qnn.QuantConv1d, qnn.QuantConv2d)):
            module.quant_weight()


def _quant_point(leaf: str, name: str, config: QuantConfig, home: dict[str, Any] | None) -> nn.Module:
    bits = config.act_bits_for(name)
    if leaf == SOFTMAX_POINT:
        quant = presets.softmax_quant(config, config.softmax_bits or bits)
    else:
        quant = presets.act_quant(config, bits)
    return quant_identity(quant, home)


def quant_identity(quant: Any, home: dict[str, Any] | None) -> nn.Module:
    """A ``QuantIdentity`` with the activation quantizer ``quant``, moved to ``home``'s device and dtype (as
    :func:`float_home` gives them; ``None``: brevitas's float32 on the CPU). A later ``load_state_dict`` keeps it
    there through :func:`follow_home_on_load`'s hooks."""
    point = qnn.QuantIdentity(act_quant=quant, return_quant_tensor=False)
    return point.to(**home) if home else point


def _quant_layer(module: nn.Module, name: str, config: QuantConfig, quant_input: bool) -> nn.Module:
    wq = presets.weight_quant(config, config.weight_bits_for(name))
    common: dict[str, Any] = {
        "bias": module.bias is not None,
        "weight_quant": wq,
        "bias_quant": None,
        "input_quant": presets.act_quant(config, config.act_bits_for(name)) if quant_input else None,
        "output_quant": None,
        "return_quant_tensor": False,
        "device": module.weight.device,
        "dtype": module.weight.dtype,
    }
    if isinstance(module, nn.Linear):
        new: nn.Module = qnn.QuantLinear(module.in_features, module.out_features, **common)
    else:
        cls = qnn.QuantConv2d if isinstance(module, nn.Conv2d) else qnn.QuantConv1d
        new = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            padding_mode=module.padding_mode,
            **common,
        )
    # the float layer's own parameters, not copies: weights tied to another layer (or an embedding) stay tied, and
    # a frozen weight stays frozen
    new.weight = module.weight
    if module.bias is not None:
        new.bias = module.bias
    new.train(module.training)
    # its input quantizer (built as float32 on the CPU) follows the weight; the weight itself is already there
    return new.to(device=module.weight.device, dtype=module.weight.dtype)


# ------------------------------------------------------------------------------------------------------------
# brevitas rebuilds every quantizer from its injector whenever a state dict is loaded (REINIT_ON_STATE_DICT_LOAD).
# The hooks below keep that rebuild where the model is now, and as frozen as it was.


def _state_home(state_dict: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    """Device and dtype of the first floating tensor ``state_dict`` holds under ``prefix``."""
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor) and value.is_floating_point():
            return {"device": value.device, "dtype": value.dtype}
    return None


def _before_load(proxy: nn.Module, state_dict: dict[str, Any], prefix: str, *_rest: Any) -> None:
    """load_state_dict pre-hook of a brevitas quant proxy: point its injector at the proxy's current device and
    dtype (a quantized model moved with ``.to()``/``.cuda()`` or materialised with ``to_empty()`` came back float32
    on the CPU, or on meta) and note which of its parameters are frozen (the rebuilt ones are new Parameters)."""
    tracked = [m for m in proxy.tracked_module_list if isinstance(getattr(m, "weight", None), torch.Tensor)]
    home = float_home(tracked[0]) if tracked else float_home(proxy)
    if home is None or home["device"].type == "meta":  # load_state_dict(assign=True) into a meta-built model
        home = _state_home(state_dict, prefix) or home
    if home is not None:
        proxy.quant_injector = proxy.quant_injector.let(**home)
    proxy._frozen_before_load = [name for name, p in proxy.named_parameters() if not p.requires_grad]


def _after_load(proxy: nn.Module, _incompatible_keys: Any) -> None:
    """load_state_dict post-hook: the rebuilt quantizer's parameters frozen where the old ones were."""
    params = dict(proxy.named_parameters())
    for name in proxy.__dict__.pop("_frozen_before_load", []):
        if name in params:
            params[name].requires_grad_(False)


def follow_home_on_load(model: nn.Module) -> None:
    """Give every brevitas quant proxy in ``model`` the load hooks (once): after ``load_state_dict`` its quantizers
    are on the model's current device and dtype, and frozen where they were."""
    for module in model.modules():
        if isinstance(module, QuantProxyFromInjector) and not getattr(module, "_follows_home", False):
            module.register_load_state_dict_pre_hook(_before_load)
            module.register_load_state_dict_post_hook(_after_load)
            module._follows_home = True


# brevitas's activation scale and zero point measured from data: a step counter decides whether they still collect
RUNTIME_STATS = (ParameterFromRuntimeStatsScaling, ParameterFromRuntimeZeroPoint)


def reset_activation_stats(model: nn.Module, names: set[str] | None = None) -> None:
    """Return ``model``'s activation scales and zero points (brevitas's runtime-statistics modules; all of them,
    or those ``names`` names) to their uncalibrated state, so the next calibration measures them afresh.

    brevitas collects statistics only while a module's step counter is below its limit: a calibrated or loaded
    model ignored a second calibration, or averaged the new ranges with a stale buffer and multiplied the old scale
    by the result."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if names is not None and name not in names:
                continue
            if isinstance(module, RUNTIME_STATS):
                # brevitas's starting values: a scale is multiplied into 1, a zero point added to 0
                start = 1.0 if isinstance(module, ParameterFromRuntimeStatsScaling) else 0.0
                module.buffer.fill_(start)
                module.value.fill_(start)
                module.counter = 0


def uncalibrated_stats(model: nn.Module) -> list[str]:
    """Names of ``model``'s activation scale/zero-point modules that have seen no statistics yet."""
    return [name for name, m in model.named_modules() if isinstance(m, RUNTIME_STATS) and m.counter == 0]


def float_home(module: nn.Module) -> dict[str, Any] | None:
    """``{"device", "dtype"}`` of ``module``'s first floating-point parameter or buffer; ``None`` if it has none."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return None


def held_bits(module: nn.Module) -> dict[str, list[int]]:
    """The bit widths ``module``'s own brevitas quantizers hold (what its ONNX Q/DQ or HLS weights carry), sorted:
    ``{"weight": [...], "activation": [...], "kv": [...]}``: weights of the quantized Conv/Linear layers,
    activation quant points, and K/V (:data:`edgeattn.quant.config.KV_POINTS`). Empty lists for a float module."""
    from edgeattn.quant.adaptive import TokenAdaptiveQuant
    from edgeattn.quant.config import KV_POINTS

    found: dict[str, set[int]] = {"weight": set(), "activation": set(), "kv": set()}
    layers = (qnn.QuantLinear, qnn.QuantConv1d, qnn.QuantConv2d)
    # a token-adaptive point's quantizers are its .high and .low: K/V by the point's own name
    adaptive = {name for name, m in module.named_modules() if isinstance(m, TokenAdaptiveQuant)}
    for name, m in module.named_modules():
        if isinstance(m, layers) and m.weight_quant.bit_width() is not None:
            found["weight"].add(int(round(float(m.weight_quant.bit_width()))))
        elif isinstance(m, qnn.QuantIdentity) and m.act_quant.bit_width() is not None:
            point = name.rpartition(".")[0] if name.rpartition(".")[0] in adaptive else name
            kind = "kv" if point.endswith(KV_POINTS) else "activation"
            found[kind].add(int(round(float(m.act_quant.bit_width()))))
    return {k: sorted(v) for k, v in found.items()}


def quant_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> brevitas layer/quant point of a quantized model (for reports and tests)."""
    kinds = (qnn.QuantLinear, qnn.QuantConv1d, qnn.QuantConv2d, qnn.QuantIdentity)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}
