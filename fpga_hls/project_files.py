"""The files of a generated HLS project (the layout in :mod:`edgeattn.fpga_hls.generator`): the generated headers
(``parameters.h``, ``weights.h``, ``ea/ea_tables.h``), the test vectors and the DDR weight image under ``tb_data/``,
``build_prj.tcl``, ``project.json`` and ``README.md``, and the copied templates. :func:`write_project` writes them
all into the staging folder that :func:`~edgeattn.fpga_hls.generator.generate_project` publishes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from edgeattn.fpga_hls import golden as G
from edgeattn.fpga_hls.estimate import buffer_banks, buffer_width, layernorm_widths, weight_column_words
from edgeattn.fpga_hls.weight_image import WeightImage, build_weight_image

if TYPE_CHECKING:  # annotations only: generator imports this module
    from edgeattn.fpga_hls.generator import ProjectInfo


def _c_array(ctype: str, name: str, arr: np.ndarray, dims: list[str]) -> str:
    flat = np.asarray(arr, dtype=np.int64).ravel().tolist()
    rows = [", ".join(map(str, flat[i : i + 24])) for i in range(0, len(flat), 24)]
    body = ",\n    ".join(rows)
    return f"static const {ctype} {name}{''.join(f'[{d}]' for d in dims)} = {{\n    {body}}};\n"


def _comment(text: str) -> str:
    """``text`` for a one-line C++ comment of an ASCII header: whitespace (newlines too) collapsed, other
    characters as Python escapes (a profile named ``Prüfstand`` becomes ``Pr\\xfcfstand``)."""
    return " ".join(str(text).split()).encode("ascii", "backslashreplace").decode("ascii")


def _raw_ctype(width: int) -> str:
    return "short" if width <= 16 else "int"


def _parameters_h(
    info: ProjectInfo, hls, lps: list[G.LayerParams], mp: G.ModelParams | None, img: WeightImage
) -> str:
    fmt, s = info.formats, info.shape
    n_dense = sum(not lp.is_moe for lp in lps)
    n_moe = len(lps) - n_dense
    head_dim = s.dim // s.heads
    eps = s.ln_eps  # every LayerNorm's (model_shape checked that they share it)
    ln_f = fmt.ln_frac(s.dim)
    defs: list[tuple[str, Any, str]] = [
        ("EA_ACT_W", fmt.act_width, "activations: ap_fixed<W, I>"),
        ("EA_ACT_I", fmt.act_int, ""),
        ("EA_W_W", fmt.weight_width, "linear weights: ap_fixed<W, I>"),
        ("EA_W_I", fmt.weight_int, ""),
        ("EA_SM_IN_W", fmt.score_width, "attention scores (softmax input)"),
        ("EA_SM_IN_I", fmt.score_int, ""),
        ("EA_SM_OUT_F", fmt.prob_frac, "softmax probability fraction bits"),
        ("EA_GELU_F", fmt.gelu_table_frac, "GELU residual table fraction bits"),
        ("EA_QK_F", G.QK_FRAC, "fraction bits of q*scale and k"),
        ("EA_SCALE_F", G.SCALE_FRAC, "fraction bits of 1/sqrt(head_dim)"),
        ("EA_QSCALE_RAW", G.qscale_raw(head_dim), f"1/sqrt({head_dim})"),
        ("EA_LN_F", ln_f, "LayerNorm centred-value fraction bits"),
        ("EA_LN_R", G.LN_INV_FRAC, "LayerNorm 1/std fraction bits"),
        ("EA_LN_EPS_RAW", G.ln_eps_raw(eps, ln_f), f"LayerNorm eps {eps:g}"),
        *layernorm_widths(fmt, s.dim, eps).defines(),
        ("EA_ATTN_P", hls.attn_parallel, "query rows in flight"),
        ("EA_MAC_R", hls.mac_rows, "MAC array rows (inputs per cycle)"),
        ("EA_MAC_C", hls.mac_cols, "MAC array columns (outputs per cycle)"),
        ("EA_TOKENS", s.tokens, ""),
        ("EA_MAX_ROWS", s.tokens, "rows of every activation buffer"),
        ("EA_BUF_W", buffer_width(s, hls), "row width of every activation buffer"),
        ("EA_MAC_BANKS", buffer_banks(s, hls), "cyclic banks of each buffer row"),
        ("EA_WCOL_WORDS", weight_column_words(s, hls), "words of the MAC unit's weight-column buffer"),
        ("EA_WEIGHT_WORDS", img.n_words, f"words of the DDR weight image ({hls.mac_rows} weights each)"),
        ("EA_BIAS_LEN", int(img.bias.size), "entries of bias_rom"),
        ("EA_DIM", s.dim, ""),
        ("EA_HEADS", s.heads, ""),
        ("EA_HIDDEN", s.hidden, "MLP / expert hidden width"),
        ("EA_DEPTH", len(lps), "encoder layers generated"),
        ("EA_LAYER", 0, "layer run by encoder_layer_top"),
        ("EA_N_DENSE", n_dense, "layers with a dense MLP"),
        ("EA_N_MOE", n_moe, "layers with an MoE MLP"),
        ("EA_EXPERTS", max(s.experts, 1), ""),
        ("EA_TOPK", max(s.top_k, 1), ""),
        ("EA_LAYER_DEPTH", s.tokens * s.dim, "m_axi depth of encoder_layer_top ports"),
        ("EA_HAS_VIT", int(mp is not None), "vit_top is generated"),
        ("EA_TOP_VIT", int(info.top == "vit_top"), "the test bench runs vit_top"),
        ("EA_ARAW_T", _raw_ctype(fmt.act_width), "raw activation-typed parameter ROM type"),
    ]
    if mp is not None:
        defs += [
            ("EA_IN_CHANS", mp.in_chans, ""),
            ("EA_IMG", mp.img_size, ""),
            ("EA_PATCH", mp.patch, ""),
            ("EA_NUM_PATCHES", (mp.img_size // mp.patch) ** 2, ""),
            ("EA_PATCH_DIM", int(mp.patch_w.shape[1]), ""),
            ("EA_CLASSES", int(mp.head_w.shape[0]), ""),
            ("EA_IMAGE_DEPTH", mp.in_chans * mp.img_size**2, "m_axi depth of the image port"),
        ]
    lines = [
        f"// Generated by `edgeattn hls` for {_comment(info.model)} "
        f"({'whole model' if mp is not None else f'layer {info.layer}'}).",
        f"// Profile {_comment(info.stats['profile'])}: {_comment(hls.part)} at {hls.clock_mhz:g} MHz.",
        "#ifndef EA_PARAMETERS_H",
        "#define EA_PARAMETERS_H",
        "",
    ]
    for key, value, comment in defs:
        lines.append(f"#define {key} {value}" + (f"  // {comment}" if comment else ""))
    lines += ["", "#endif", ""]
    return "\n".join(lines)


def _weights_h(info: ProjectInfo, lps: list[G.LayerParams], mp: G.ModelParams | None, img: WeightImage) -> str:
    a = "araw_t"
    layer_moe, layer_dense, im, idn = [], [], 0, 0
    for lp in lps:
        layer_moe.append(im if lp.is_moe else -1)
        layer_dense.append(-1 if lp.is_moe else idn)
        im, idn = im + lp.is_moe, idn + (not lp.is_moe)
    out = [
        f"// Generated by `edgeattn hls`: on-chip parameters of {_comment(info.model)} at the profile's widths",
        "// (raw integers: LayerNorms, biases, tokens) and where each linear layer's weights start in the DDR",
        "// weight image (tb_data/weights.dat, read through the wmem port; layout in docs/hls.md).",
        "#ifndef EA_WEIGHTS_H",
        "#define EA_WEIGHTS_H",
        "",
        '#include "ea/ea_types.h"',
        "",
        "namespace ea {",
        "",
        _c_array("short", "layer_moe", np.array(layer_moe), ["EA_DEPTH"]),
        _c_array("short", "layer_dense", np.array(layer_dense), ["EA_DEPTH"]),
    ]

    def stack(attr: str) -> np.ndarray:
        return np.stack([getattr(lp, attr) for lp in lps])

    for attr in ("ln1_g", "ln1_b", "ln2_g", "ln2_b"):
        out.append(_c_array(a, attr, stack(attr), ["EA_DEPTH", "EA_DIM"]))
    out.append("// every linear layer's biases, from its *_b_off")
    out.append(_c_array(a, "bias_rom", img.bias, ["EA_BIAS_LEN"]))
    out.append("// word offsets (*_w_off) in wmem and bias offsets (*_b_off) in bias_rom")
    groups = [("qkv", "EA_DEPTH"), ("proj", "EA_DEPTH"), ("fc1", "EA_N_DENSE"), ("fc2", "EA_N_DENSE"),
              ("gate", "EA_N_MOE"), ("efc1", "EA_N_MOE"), ("efc2", "EA_N_MOE")]
    for name, count in groups:
        if name not in img.w_off:
            continue
        dims = [count] + (["EA_EXPERTS"] if name.startswith("efc") else [])
        out.append(_c_array("int", f"{name}_w_off", np.array(img.w_off[name]), dims))
        out.append(_c_array("int", f"{name}_b_off", np.array(img.b_off[name]), dims))
    if mp is not None:
        out.append("// patch embedding, class token, positions, final norm and head")
        for name in ("patch", "head"):
            out.append(f"static const int {name}_w_off = {img.w_off[name][0]};")
            out.append(f"static const int {name}_b_off = {img.b_off[name][0]};")
        out.append(_c_array(a, "cls_token", mp.cls_token, ["EA_DIM"]))
        out.append(_c_array(a, "pos_embed", mp.pos_embed, ["EA_TOKENS", "EA_DIM"]))
        out.append(_c_array(a, "norm_g", mp.norm_g, ["EA_DIM"]))
        out.append(_c_array(a, "norm_b", mp.norm_b, ["EA_DIM"]))
    out += ["}  // namespace ea", "", "#endif", ""]
    return "\n".join(out)


def _readme(info: ProjectInfo, hls, img: WeightImage) -> str:
    """The project's own README: what it is, how to run it, where the weights go, what the estimate says."""
    part = "the whole model" if info.layer is None else f"encoder layer {info.layer}"
    est, fmt = info.estimate, info.formats
    gate = info.gate or {}
    ports = (
        "image (C x H x W act_t) on gmem0, logits on gmem1"
        if info.top == "vit_top"
        else "x_in (tokens x dim act_t) on gmem0, x_out on gmem1"
    )
    lines = [
        f"# edgeattn HLS project: {_comment(info.model)}, {part}",
        "",
        f"Generated by `edgeattn hls` for `{_comment(hls.part)}` at {hls.clock_mhz:g} MHz (profile "
        f"`{_comment(info.stats.get('profile', ''))}`): an Edge-MoE-style attention accelerator, top function "
        f"`{info.top}`. Activations `ap_fixed<{fmt.act_width},{fmt.act_int}>`, weights "
        f"`ap_fixed<{fmt.weight_width},{fmt.weight_int}>`; one {hls.mac_rows}x{hls.mac_cols} MAC unit serves every "
        f"linear layer, {hls.attn_parallel} attention rows in flight. The full "
        "specification is edgeattn's docs/hls.md.",
        "",
        "## Run it",
        "",
        "```",
        "vitis_hls -f build_prj.tcl                       # csim, csynth, cosim (first test vector), export",
        'vitis_hls -f build_prj.tcl "cosim=0 export=0"    # only some steps; cosim_vectors=N or =all for cosim',
        "python -c \"from edgeattn.fpga_hls import run_csim; run_csim('.')\"   # C simulation with g++, no Vitis",
        "```",
        "",
        "The test bench runs the top on every vector of `tb_data/tb_input.dat` and compares each output with the",
        "golden model (`tb_data/tb_golden.dat`) bit for bit; it prints `EDGEATTN_CSIM vectors=... mismatches=...`",
        "and exits 0 only when nothing differs.",
        "",
        "## Interface",
        "",
        f"- `{info.top}`: {ports}; `wmem` (the weights) on gmem2; control on s_axilite.",
        f"- `wmem` holds {img.n_words} words of {hls.mac_rows * fmt.weight_width} bits "
        f"({img.n_words * hls.mac_rows * fmt.weight_width // 8} bytes): `tb_data/weights.dat` as text, first line "
        "`words lanes`, then one word per line, lane 0 first. A host copies it to DDR and writes its address to "
        "the `wmem` register. Matrix `W[out][in]` starts at its word offset `off` (the `*_w_off` tables in "
        "`firmware/weights.h`): word `off + (o * ceil(in / R) + i) * C + c` holds `W[o * C + c][i * R + k]` in lane "
        f"`k` (R = {hls.mac_rows}, C = {hls.mac_cols}), zero outside the matrix.",
        "- Biases, LayerNorm parameters and tokens are on-chip ROMs in `firmware/weights.h`.",
        "",
        "## Numbers",
        "",
        f"- Fixed point vs {info.reference}: max abs err {info.golden_vs_float['max_abs_err']:.3g}, cosine "
        f"{info.golden_vs_float['cosine']:.6f} over {info.vectors} test vectors; accuracy gate "
        f"{'passed' if gate.get('passed') else 'FAILED'}.",
        f"- Estimate (analytical, not synthesis): {est['cycles']['total']} cycles = {est['latency_us']:.1f} us, "
        f"DSP {est['dsp']['total']} of {est['budget']['dsp']}, BRAM18K {est['bram18k']['total']} of "
        f"{est['budget']['bram18k']}, {est['ddr']['weight_bytes'] / 1e6:.2f} MB of weights from DDR per "
        "inference. `project.json` has every figure and the arithmetic behind the estimate.",
        "",
    ]
    return "\n".join(lines)


def _tables_h(fmt: G.HLSFormats) -> str:
    from edgeattn.approx.fixed import EXP2_HI, EXP2_LO

    table = G.gelu_table(fmt)
    return "\n".join(
        [
            "// Generated by `edgeattn hls` from edgeattn.approx.fixed (docs/fixed_point.md): the 2^f tables",
            f"// (24 fraction bits) and the Edge-MoE GELU residual table delta(i/32) "
            f"({fmt.gelu_table_frac} bits).",
            "#ifndef EA_TABLES_H",
            "#define EA_TABLES_H",
            "",
            f"#define EA_GELU_ENTRIES {len(table)}",
            _c_array("unsigned int", "EA_EXP2_HI", EXP2_HI, [str(len(EXP2_HI))]),
            _c_array("unsigned int", "EA_EXP2_LO", EXP2_LO, [str(len(EXP2_LO))]),
            _c_array("int", "EA_GELU_DELTA", table, ["EA_GELU_ENTRIES"]),
            "#endif",
            "",
        ]
    )


def _write_rows(path: Path, rows: np.ndarray, header: str | None = None, fmt: str = "%d") -> None:
    with open(path, "w", encoding="ascii") as fh:
        if header:
            fh.write(header + "\n")
        np.savetxt(fh, rows.reshape(rows.shape[0], -1), fmt=fmt, delimiter=" ")


def _tcl(info: ProjectInfo, hls) -> str:
    text = (
        resources.files("edgeattn.fpga_hls").joinpath("templates/build_prj.tcl").read_text(encoding="utf-8")
    )
    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch == "_" else "_" for ch in info.path.name) or "edgeattn"
    subs = {
        "@MODEL@": _comment(info.model) + ("" if info.layer is None else f" layer {info.layer}"),
        "@PROJECT@": safe,
        "@TOP@": info.top,
        "@PART@": hls.part,
        "@PERIOD_NS@": f"{1000.0 / hls.clock_mhz:.3f}",
    }
    for key, value in subs.items():
        text = text.replace(key, str(value))
    return text


def _copy_templates(dst: Path) -> None:
    root = resources.files("edgeattn.fpga_hls").joinpath("templates")
    for rel in ("firmware/edgeattn_top.cpp", "firmware/edgeattn_top.h", "tb/edgeattn_tb.cpp"):
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        (dst / rel).write_bytes(root.joinpath(rel).read_bytes())
    lib = root.joinpath("firmware/ea")
    (dst / "firmware/ea").mkdir(parents=True, exist_ok=True)
    for item in lib.iterdir():
        if item.name.endswith(".h"):
            (dst / "firmware/ea" / item.name).write_bytes(item.read_bytes())


def write_project(
    dst: Path,
    info: ProjectInfo,
    hls,
    lps: list[G.LayerParams],
    mp: G.ModelParams | None,
    in_raw: np.ndarray,
    gold: np.ndarray,
    ref: np.ndarray,
) -> None:
    """Write every file of the project described by ``info`` into ``dst`` (the staging folder; ``info.path`` is
    where it will be published, which build_prj.tcl names)."""
    final = info.path
    info_tmp = replace(info, path=dst)
    _copy_templates(dst)
    img = build_weight_image(lps, mp, hls.mac_rows, hls.mac_cols)
    (dst / "firmware/parameters.h").write_text(_parameters_h(info_tmp, hls, lps, mp, img), encoding="ascii")
    (dst / "firmware/weights.h").write_text(_weights_h(info_tmp, lps, mp, img), encoding="ascii")
    (dst / "firmware/ea/ea_tables.h").write_text(_tables_h(info.formats), encoding="ascii")
    data = dst / "tb_data"
    data.mkdir()
    v = in_raw.shape[0]
    in_len = int(np.prod(in_raw.shape[1:]))
    out_len = int(np.prod(gold.shape[1:]))
    _write_rows(data / "tb_input.dat", in_raw, header=f"{v} {in_len} {out_len}")
    _write_rows(data / "tb_golden.dat", gold)
    _write_rows(data / "weights.dat", img.words, header=f"{img.n_words} {hls.mac_rows}")
    # %.17g: the float64 values exactly, so run_csim's error against them is the golden model's bit for bit
    _write_rows(data / "tb_float.dat", ref, fmt="%.17g")
    (dst / "build_prj.tcl").write_text(_tcl(replace(info, path=final), hls), encoding="utf-8")
    (dst / "project.json").write_text(json.dumps(info.to_json(), indent=2) + "\n", encoding="utf-8")
    (dst / "README.md").write_text(_readme(info, hls, img), encoding="utf-8")
