"""edgeattn.reparameterize on every registered model: same outputs, no BN / branches, fewer ONNX nodes."""

from __future__ import annotations

import pytest
import torch
from _reparam_helpers import BRANCH_ATTRS, assert_deploy_tree, randomize_bn, rel_err, small_model
from torch import nn

import edgeattn
from edgeattn.blocks import RepConv
from edgeattn.models import create_model, example_input, list_models


@pytest.mark.parametrize("name", list_models())
def test_deploy_equals_train_and_tree_is_clean(name):
    # float64, so that the check sees the folding itself: in float32 the 52 folded layers of MobileNet-V2 alone
    # round to ~1e-5 of the output
    model = randomize_bn(small_model(name)).double()
    x = example_input(model, batch_size=2)
    x = x.double() if x.is_floating_point() else x
    with torch.no_grad():
        y = model(x)
        deploy = edgeattn.reparameterize(model)
        z = deploy(x)
    assert y.dtype == z.dtype == torch.float64
    assert rel_err(y, z) < 1e-12
    # the outputs depend on the input (a random model whose features vanish would pass any comparison)
    assert (y[0] - y[1]).abs().max() > 1e-3 * y.abs().max()
    assert_deploy_tree(deploy)
    # inplace=False: the train form is untouched
    assert not any(getattr(m, "deployed", False) for m in model.modules())
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        assert sum(p.numel() for p in deploy.parameters()) < sum(p.numel() for p in model.parameters())


def test_inplace_idempotent_and_training_flag():
    model = randomize_bn(small_model("fmvit_t"))
    x = example_input(model)
    with torch.no_grad():
        y = model(x)
    model.train()
    same = edgeattn.reparameterize(model, inplace=True)
    assert same is model and model.training  # the flag is kept: QAT trains the deploy form
    edgeattn.reparameterize(model, inplace=True)  # a second pass is a no-op
    model.eval()
    with torch.no_grad():
        assert rel_err(y, model(x)) < 1e-5
    assert_deploy_tree(model)
    assert not any(hasattr(m, a) and getattr(m, a) is not None for m in model.modules() for a in BRANCH_ATTRS)


def test_edgeattn_reparameterize_is_the_function_after_submodule_import():
    import importlib

    importlib.import_module("edgeattn.reparameterize")
    block = randomize_bn(RepConv(4, 4))
    assert edgeattn.reparameterize(block).deployed


def _onnx_nodes_and_run(model: nn.Module, x: torch.Tensor, path) -> tuple[int, dict, object]:
    import onnx
    import onnxruntime as ort

    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18, verbose=False)
    graph = onnx.load(str(path)).graph
    ops: dict[str, int] = {}
    for node in graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    return len(graph.node), ops, out


@pytest.mark.parametrize("name", ["fmvit_t", "repconv"])
def test_deploy_exports_with_fewer_onnx_nodes(name, tmp_path):
    """Fewer ONNX nodes and fewer Conv nodes; ONNX Runtime agrees with torch on both forms.

    (The exporter's optimizer already folds a lone Conv+BN pair, so plain ConvBN models such as
    mobilenetv2 export to the same node count either way; branches are what only reparameterization
    removes.) FMViT-T is built with one block per stage to keep the export quick.
    """
    pytest.importorskip("onnxruntime")
    if name == "repconv":
        model = randomize_bn(RepConv(8, 8, 3, num_branches=2))
        x = torch.randn(1, 8, 10, 10)
    else:
        model = randomize_bn(create_model("fmvit_t", img_size=32, num_classes=10, depths=(1, 1, 1, 1)))
        x = example_input(model)
    deploy = edgeattn.reparameterize(model)
    n_train, ops_train, out_train = _onnx_nodes_and_run(model, x, tmp_path / "train.onnx")
    n_deploy, ops_deploy, out_deploy = _onnx_nodes_and_run(deploy, x, tmp_path / "deploy.onnx")
    assert n_deploy < n_train, (ops_train, ops_deploy)
    assert ops_deploy.get("Conv", 0) < ops_train.get("Conv", 0)
    assert "BatchNormalization" not in ops_deploy
    # a second runtime agrees with torch on both forms
    with torch.no_grad():
        ref = model(x).numpy()
    scale = abs(ref).max()
    assert abs(out_train - ref).max() / scale < 1e-5
    assert abs(out_deploy - ref).max() / scale < 1e-5
