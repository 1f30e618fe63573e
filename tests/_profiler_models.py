"""Small artifacts for the profiler tests, built directly with onnx.helper (exact, hand-countable MACs)
and one torch-exported attention net. No dependency on the model registry or the exporter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_stack(
    path: Path,
    size: int = 32,
    ch: int = 16,
    n: int = 4,
    batch: int | str = 1,
    dtype: str = "fp32",
    int8: bool = False,
) -> dict[str, int]:
    """n x [3x3 Conv + Relu] (3->ch, then ch->ch), grouped Conv (groups 4), GAP, Gemm(ch->10), MatMul.

    Returns the hand-counted MACs per inference at batch 1 (``macs``) and the parts they come from.
    ``dtype='fp16'`` stores every tensor in float16; ``int8=True`` makes a QDQ graph with int8 weight
    initializers (per-output-channel scales) and int8-quantized activations before each conv.
    """
    rng = np.random.default_rng(0)
    ft = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
    npf = np.float16 if dtype == "fp16" else np.float32
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr, name))
        return name

    def qdq_act(x: str, k: int) -> str:
        s = const(f"as{k}", np.array(0.05, np.float32))
        z = const(f"az{k}", np.array(0, np.int8))
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"aq{k}"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"aq{k}", s, z], [f"adq{k}"]))
        return f"adq{k}"

    def weight(k: int, shape: tuple[int, ...]) -> str:
        w = (rng.standard_normal(shape) * (2.0 / np.prod(shape[1:])) ** 0.5).astype(np.float32)
        if not int8:
            return const(f"w{k}", w.astype(npf))
        scale = (np.abs(w).reshape(shape[0], -1).max(1) / 127.0).astype(np.float32)
        q = np.clip(np.round(w / scale.reshape(-1, *[1] * (len(shape) - 1))), -127, 127).astype(np.int8)
        const(f"wq{k}", q)
        const(f"ws{k}", scale)
        const(f"wz{k}", np.zeros(shape[0], np.int8))
        nodes.append(helper.make_node("DequantizeLinear", [f"wq{k}", f"ws{k}", f"wz{k}"], [f"w{k}"], axis=0))
        return f"w{k}"

    x = "x"
    cin = 3
    macs = 0
    for k in range(n):
        w = weight(k, (ch, cin, 3, 3))
        b = const(f"b{k}", np.zeros(ch, npf))
        inp = qdq_act(x, k) if int8 else x
        nodes.append(helper.make_node("Conv", [inp, w, b], [f"c{k}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{k}"], [f"r{k}"]))
        macs += size * size * ch * cin * 9
        x, cin = f"r{k}", ch
    wg = weight(n, (ch, ch // 4, 3, 3))
    inp = qdq_act(x, n) if int8 else x
    nodes.append(helper.make_node("Conv", [inp, wg], ["g"], pads=[1, 1, 1, 1], strides=[2, 2], group=4))
    half = size // 2
    grouped = half * half * ch * (ch // 4) * 9
    nodes.append(helper.make_node("GlobalAveragePool", ["g"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    const("fcw", (rng.standard_normal((10, ch)) * 0.1).astype(npf))
    const("fcb", np.zeros(10, npf))
    nodes.append(helper.make_node("Gemm", ["flat", "fcw", "fcb"], ["fc"], transB=1))
    const("mm", (rng.standard_normal((10, 6)) * 0.1).astype(npf))
    nodes.append(helper.make_node("MatMul", ["fc", "mm"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "conv_stack",
        [helper.make_tensor_value_info("x", ft, [batch, 3, size, size])],
        [helper.make_tensor_value_info("y", ft, [batch, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"macs": macs + grouped + ch * 10 + 10 * 6, "convs": macs, "grouped": grouped}


def attention_net(path: Path, tokens_side: int = 8, dim: int = 32, heads: int = 4) -> int:
    """A torch conv + multi-head attention net exported to ONNX; returns its hand-counted MACs."""
    import warnings

    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = torch.nn.Conv2d(3, dim, 2, stride=2)
            self.att = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
            self.fc = torch.nn.Linear(dim, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = self.stem(x).flatten(2).transpose(1, 2)
            t = t + self.att(t, t, t, need_weights=False)[0]
            return self.fc(t.mean(1))

    side = tokens_side * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Net().eval(),
            (torch.randn(1, 3, side, side),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
        )
    n = tokens_side * tokens_side
    stem = n * dim * 3 * 4
    in_proj = n * 3 * dim * dim
    attn = 2 * n * n * dim  # q k^T and a v over all heads: heads x n x n x (dim / heads), twice
    out_proj = n * dim * dim
    return stem + in_proj + attn + out_proj + dim * 10


def to_openvino_ir(onnx_path: Path, xml_path: Path, compress_to_fp16: bool = False) -> Path:
    """Convert an ONNX file to OpenVINO IR with OpenVINO's own converter."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=compress_to_fp16)
    return xml_path
