"""Analytical cycles / DSP / BRAM estimate of the accelerator for a model shape and a profile's parallelism.

Not a synthesis result: a first-order model of the loops in the templates, with every formula written out
in the returned ``arithmetic`` lines so a reader can check it. Assumptions (docs/hls.md):

- every pipelined loop runs at II=1; a loop costs ``trips + depth`` cycles;
- the MAC array is ``mac_rows x mac_cols``, one unit shared by every linear layer; one linear layer
  ``IN -> OUT`` over ``n`` rows costs, per output tile, ``mac_cols`` (bias load) + ``D_DDR`` (the first word of
  the DDR burst) + ``ceil(IN/mac_rows) * mac_cols`` (the burst: the tile's weight column) + ``n`` (drain) + per
  input tile ``(mac_cols + n + D_mac)`` (tile load from the column, rows);
- the tops' copies run one element per cycle: a layer's input and output (``2 n D``), the ViT's image gather
  (``(n - 1) patch_dim``) and token assembly (``n D``);
- attention: two passes (Q.K^T with the online softmax, then A.V) of ``STEPS = (ceil(N/P)-1)(N+P) + P-1 + N``
  steps per head, plus the exp/reciprocal pipeline depths;
- a DSP48E2 multiplies 27 x 18 bits: an ``a x b``-bit product takes ``ceil(a/27) * ceil(b/18)`` DSPs
  (larger operand on the 27-bit port);
- LayerNorm and residual adds process ``mac_rows`` / ``mac_cols`` elements per cycle;
- a BRAM18K holds 18 Kbit as 16K x 1, 8K x 2, 4K x 4, 2K x 9, 1K x 18 or 512 x 36; a buffer partitioned into
  ``k`` banks takes ``k`` times the blocks of one bank in its cheapest shape. The activation buffers all have
  one shape (``EA_MAX_ROWS x EA_BUF_W``, :func:`buffer_width`), in :func:`buffer_banks` cyclic banks;
- the weights stream from DDR, ``mac_rows`` weights per cycle during a burst (``ddr`` in the result); the
  biases, LayerNorm parameters and (whole ViT) tokens are on-chip ROMs (``parameters``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LayerShape", "buffer_banks", "buffer_width", "dsp_per_mult", "estimate", "weight_column_words"]

D_MAC = 6  # MAC array pipeline depth (multiply, adder tree of 16, accumulate)
D_EXP = 8  # exp pipeline: x*log2e multiply, table reads, 25x25 product, shift
D_RECIP = 42  # restoring divider for 1/d (one quotient bit per cycle, 40 + 2)
D_GELU = 5  # |x|, table read, interpolation multiply, subtract
D_LN = 36  # isqrt (32) + divider start-up per row, not overlapped
D_DDR = 64  # cycles from an m_axi read request to its first word: Vitis HLS schedules bursts with a default 64


@dataclass(frozen=True)
class LayerShape:
    """The shape of one encoder layer (plus, for a whole ViT, the embedding and head)."""

    tokens: int
    dim: int
    heads: int
    hidden: int
    experts: int = 0  # 0: dense MLP
    top_k: int = 0
    depth: int = 1
    moe_layers: int = 0
    patch_dim: int = 0  # > 0: whole ViT (patch embedding + head)
    classes: int = 0


def buffer_width(shape: LayerShape, hls) -> int:
    """Row width of the design's activation buffers: they all have one shape (so that one MAC unit serves every
    linear layer), as wide as the widest row a layer reads or writes. The head is the exception: it runs in
    passes of whole output tiles, so its class count does not widen every buffer (hence at least ``mac_cols``)."""
    return max(3 * shape.dim, shape.hidden, shape.experts, shape.patch_dim, hls.mac_cols)


def buffer_banks(shape: LayerShape, hls) -> int:
    """Cyclic banks of a buffer row: enough for every unrolled access to touch distinct banks (the MAC unit's
    ``mac_rows`` inputs and ``mac_cols`` outputs, a head's ``head_dim``-wide Q, K or V row), at most one per
    element."""
    return min(math.lcm(hls.mac_rows, hls.mac_cols, shape.dim // shape.heads), buffer_width(shape, hls))


def weight_column_words(shape: LayerShape, hls) -> int:
    """Words of the MAC unit's weight-column buffer: one output tile's weights for the widest input a layer has."""
    return math.ceil(buffer_width(shape, hls) / hls.mac_rows) * hls.mac_cols


def dsp_per_mult(a_bits: int, b_bits: int) -> int:
    """DSP48E2 slices for an ``a x b``-bit multiplier (27 x 18 native)."""
    a, b = max(a_bits, b_bits), min(a_bits, b_bits)
    return min(math.ceil(a / 27) * math.ceil(b / 18), math.ceil(a / 18) * math.ceil(b / 27))


BRAM18K_SHAPES = ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512))  # (width, depth)


def _bram(width: int, depth: int, banks: int = 1) -> int:
    """BRAM18K blocks of a ``width``-bit, ``depth``-deep buffer split into ``banks`` cyclic banks."""
    per_bank_depth = math.ceil(depth / banks)
    per_bank = min(math.ceil(width / w) * math.ceil(per_bank_depth / d) for w, d in BRAM18K_SHAPES)
    return banks * per_bank


def _linear_cycles(n: int, fin: int, fout: int, r: int, c: int) -> int:
    tiles = math.ceil(fin / r)
    return math.ceil(fout / c) * (c + D_DDR + tiles * c + n + tiles * (c + n + D_MAC))


def _weight_words(fin: int, fout: int, r: int, c: int) -> int:
    """DDR words of one ``fin -> fout`` weight matrix: whole ``c x r`` tiles, one word per tile row."""
    return math.ceil(fout / c) * math.ceil(fin / r) * c


def estimate(shape: LayerShape, hls, formats) -> dict:
    """Cycles, DSPs, BRAM and latency of ``shape`` on the profile's ``hls`` section with ``formats`` widths.

    Returns a JSON-able dict: ``cycles`` (per part and total), ``dsp``, ``bram18k``, ``latency_us`` at
    ``hls.clock_mhz``, ``dsp_floor_us`` (every DSP busy with a MAC every cycle), ``efficiency`` (floor /
    latency), ``budget`` (the profile's DSP and BRAM18K), ``fits`` (within them) and ``arithmetic`` (the
    formulas with numbers).
    """
    n, d, h, f = shape.tokens, shape.dim, shape.heads, shape.hidden
    hd = d // h
    r, c, p = hls.mac_rows, hls.mac_cols, hls.attn_parallel
    lines: list[str] = []
    cyc: dict[str, int] = {}

    qkv = _linear_cycles(n, d, 3 * d, r, c)
    proj = _linear_cycles(n, d, d, r, c)
    lines.append(
        f"linear(n,IN,OUT) = ceil(OUT/{c}) * ({c} bias + {D_DDR} DDR latency + ceil(IN/{r})*{c} weight column "
        f"+ n drain + ceil(IN/{r}) * ({c} + n + {D_MAC}))"
    )
    lines.append(f"qkv  = linear({n},{d},{3 * d}) = {qkv}")
    lines.append(f"proj = linear({n},{d},{d}) = {proj}")
    rounds = math.ceil(n / p)
    steps = (rounds - 1) * (n + p) + (p - 1) + n
    attn = h * (2 * (steps + D_EXP) + D_RECIP)
    lines.append(f"attention steps/pass = (ceil({n}/{p})-1)*({n}+{p}) + {p}-1 + {n} = {steps}")
    lines.append(
        f"attention = heads * (2*(steps + D_exp {D_EXP}) + D_recip {D_RECIP}) = "
        f"{h}*(2*({steps}+{D_EXP})+{D_RECIP}) = {attn}"
    )
    ln = 2 * n * (3 * math.ceil(d / r) + D_LN)
    lines.append(f"layernorm x2 = 2 * n * (3 passes * ceil(D/{r} lanes) + {D_LN}) = {ln}")
    resid = 2 * n * math.ceil(d / c)
    lines.append(f"residual adds = 2 * n * ceil(D/{c} lanes) = {resid}")
    dense_mlp = _linear_cycles(n, d, f, r, c) + D_GELU + _linear_cycles(n, f, d, r, c)
    lines.append(f"dense mlp = linear({n},{d},{f}) + D_gelu {D_GELU} + linear({n},{f},{d}) = {dense_mlp}")
    moe_mlp = 0
    if shape.experts:
        e, k = shape.experts, shape.top_k
        per_expert = math.ceil(n * k / e)  # balanced routing: n*k token slots over e experts
        gate = _linear_cycles(n, d, e, r, c)
        route = n * k * e
        experts = e * (
            per_expert * d
            + _linear_cycles(per_expert, d, f, r, c)
            + D_GELU
            + _linear_cycles(per_expert, f, d, r, c)
        )
        moe_mlp = gate + route + experts
        lines.append(
            f"moe mlp = gate linear({n},{d},{e}) {gate} + routing n*k*E {route} + E*(gather + expert linears "
            f"over "
            f"ceil(n*k/E)={per_expert} rows) {experts} = {moe_mlp}"
        )
    dense_layers = shape.depth - shape.moe_layers
    per_layer_common = qkv + proj + attn + ln + resid
    total = shape.depth * per_layer_common + dense_layers * dense_mlp + shape.moe_layers * moe_mlp
    cyc.update(
        qkv=qkv, proj=proj, attention=attn, layernorm=ln, residual=resid, mlp_dense=dense_mlp, mlp_moe=moe_mlp
    )
    lines.append(
        f"total = depth {shape.depth} * (qkv+proj+attn+ln+resid) + {dense_layers} dense mlp + "
        f"{shape.moe_layers} moe mlp"
    )
    if shape.patch_dim:
        gather = (n - 1) * shape.patch_dim
        embed = gather + _linear_cycles(n - 1, shape.patch_dim, d, r, c) + n * d
        head = (3 * math.ceil(d / r) + D_LN) + _linear_cycles(1, d, shape.classes, r, c)
        cyc.update(patch_embed=embed, head=head)
        total += embed + head
        lines.append(
            f"+ image gather {gather} + patch embed linear({n - 1},{shape.patch_dim},{d}) + tokens {n}*{d} = "
            f"{embed}, + norm/head = {head}"
        )
    else:
        io = 2 * n * d
        cyc.update(io=io)
        total += io
        lines.append(f"+ layer input and output copies 2*{n}*{d} = {io}")
    cyc["total"] = total
    lines.append(f"total cycles = {total}")

    # MACs actually needed (linear layers + attention), for the DSP-limited floor
    macs_layer = n * d * 3 * d + n * d * d + 2 * h * n * n * hd
    macs_dense = 2 * n * d * f
    macs_moe = (n * d * shape.experts + shape.top_k * n * 2 * d * f) if shape.experts else 0
    macs = shape.depth * macs_layer + dense_layers * macs_dense + shape.moe_layers * macs_moe
    if shape.patch_dim:
        macs += (n - 1) * shape.patch_dim * d + d * shape.classes

    aw, ww = formats.act_width, formats.weight_width
    qk_bits = formats.act_int + 16
    dsp_mac = dsp_per_mult(aw, ww)
    dsp = {
        "mac_array": r * c * dsp_mac,
        "attention_qk": p * hd * dsp_per_mult(qk_bits, qk_bits),
        "attention_av": p * hd * dsp_per_mult(formats.prob_frac, aw),
        "softmax_exp": 2 * p * (dsp_per_mult(25, 25) + dsp_per_mult(17, 25) + dsp_per_mult(17, 25)),
        "gelu": c * dsp_per_mult(18, 18),
        "layernorm": r * (1 + 2 * dsp_per_mult(32, 32)),  # per lane: e^2, d*inv, y*gamma
    }
    dsp["total"] = sum(dsp.values())
    lines.append(
        f"DSP: MAC array {r}x{c} x {dsp_mac} ({aw}x{ww}-bit) = {dsp['mac_array']}; q.k {p}x{hd} x "
        f"{dsp_per_mult(qk_bits, qk_bits)} ({qk_bits}x{qk_bits}) = {dsp['attention_qk']}; A.V {p}x{hd} x "
        f"{dsp_per_mult(formats.prob_frac, aw)} = {dsp['attention_av']}; exp/prob {dsp['softmax_exp']}; "
        f"GELU {dsp['gelu']}; LayerNorm {r} lanes {dsp['layernorm']}; "
        f"total {dsp['total']} of {hls.dsp_budget}"
    )
    width, banks = buffer_width(shape, hls), buffer_banks(shape, hls)
    buffers = 3 + (1 if shape.experts else 0)  # x and the scratch buffers a, b (+ c: the MoE's gathered tokens)
    params = shape.depth * 4 * d  # 4 LayerNorm ROMs (gamma, beta of both norms), each in mac_rows banks
    biases = shape.depth * 4 * d + (shape.depth - shape.moe_layers) * (f + d)
    biases += shape.moe_layers * (shape.experts + shape.experts * (f + d))
    if shape.patch_dim:
        biases += d + shape.classes
    tokens = (d + n * d + 2 * d) if shape.patch_dim else 0  # class token, positions, final norm
    bram = {
        "activations": buffers * _bram(aw, n * width, banks),
        "mac_accumulator": _bram(64, n, 1) * c,
        "weight_column": _bram(r * formats.weight_width, weight_column_words(shape, hls)),
        "scores": _bram(formats.score_width, n * n, p),
        "softmax_stats": _bram(64, n),
        "parameters": 4 * _bram(aw, params // 4, r) + _bram(aw, biases) + (_bram(aw, tokens) if tokens else 0),
    }
    bram["total"] = sum(bram.values())
    lines.append(
        f"BRAM18K: {buffers} activation buffers [{n}][{width}] x {aw}b in {banks} banks = {bram['activations']}; "
        f"acc {c} banks x 64b x {n} = {bram['mac_accumulator']}; weight column {weight_column_words(shape, hls)} x "
        f"{r * formats.weight_width}b = {bram['weight_column']}; scores {n}x{n}x{formats.score_width}b in {p} "
        f"banks = {bram['scores']}; stats {bram['softmax_stats']}; parameters (LayerNorm 4 x {params // 4} in {r} "
        f"banks, biases {biases}, tokens {tokens}) = {bram['parameters']}; total {bram['total']} of "
        f"{hls.bram_budget}"
    )
    clock = float(hls.clock_mhz)
    latency_us = total / clock
    floor_cycles = macs * dsp_mac / hls.dsp_budget
    floor_us = floor_cycles / clock
    lines.append(
        f"latency = {total} cycles / {clock:g} MHz = {latency_us:.1f} us; "
        f"DSP floor = MACs {macs} x {dsp_mac} "
        f"DSP/MAC / {hls.dsp_budget} DSPs = {floor_cycles:.0f} cycles = {floor_us:.1f} us; "
        f"efficiency = floor / latency = {floor_us / latency_us:.3f}"
    )
    ww = _weight_words
    words = shape.depth * (ww(d, 3 * d, r, c) + ww(d, d, r, c)) + dense_layers * (ww(d, f, r, c) + ww(f, d, r, c))
    if shape.experts:
        e = shape.experts
        words += shape.moe_layers * (ww(d, e, r, c) + e * (ww(d, f, r, c) + ww(f, d, r, c)))
    if shape.patch_dim:
        words += ww(shape.patch_dim, d, r, c) + ww(d, shape.classes, r, c)
    word_bits = r * formats.weight_width
    weight_bytes = words * word_bits // 8
    ddr = {
        "weight_words": words,
        "word_bits": word_bits,
        "weight_bytes": weight_bytes,  # read once per inference (every expert active, as balanced routing assumes)
        "peak_gb_s": word_bits * clock * 1e6 / 8 / 1e9,  # during a weight-column burst: one word per cycle
        "average_gb_s": weight_bytes / (latency_us * 1e-6) / 1e9,
    }
    lines.append(
        f"DDR weights: {words} words x {word_bits}b = {weight_bytes} bytes per inference; peak {word_bits}b x "
        f"{clock:g} MHz = {ddr['peak_gb_s']:.2f} GB/s during weight-column bursts, average "
        f"{ddr['average_gb_s']:.3f} GB/s"
    )
    return {
        "shape": shape.__dict__,
        "parallelism": {"mac_rows": r, "mac_cols": c, "attn_parallel": p},
        "clock_mhz": clock,
        "macs": macs,
        "cycles": cyc,
        "dsp": dsp,
        "bram18k": bram,
        "ddr": ddr,
        "latency_us": latency_us,
        "dsp_floor_us": floor_us,
        "efficiency": floor_us / latency_us,
        "budget": {"dsp": hls.dsp_budget, "bram18k": hls.bram_budget},
        "fits": dsp["total"] <= hls.dsp_budget and bram["total"] <= hls.bram_budget,
        "arithmetic": lines,
    }
