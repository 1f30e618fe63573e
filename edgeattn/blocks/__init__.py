"""Deploy-friendly building blocks: attention/MLP with pluggable nonlinearities, ELA, ULSAM,
reparameterizable convolutions, the FMViT parts (gMLP, RLMHSA, CFB) and LLaMA-style decoder parts.

Every block with train-time branches or BatchNorm has ``reparameterize()`` which turns it, in place, into
its deploy form; ``edgeattn.reparameterize(model)`` walks a whole model.
"""

from __future__ import annotations

from edgeattn.blocks.attention import Attention, Mlp
from edgeattn.blocks.ela import ELA, ELA_VARIANTS
from edgeattn.blocks.fmvit import CFB, GMLP, RLMHSA, FMBlock, HFBlock
from edgeattn.blocks.llama import LlamaAttention, LlamaBlock, RMSNorm, SwiGLU
from edgeattn.blocks.rep import (
    ConvBN,
    MultiGroupConv1x1,
    RepConv,
    fuse_bn,
    fuse_bn_into_linear,
    grouped_to_dense,
    identity_kernel,
)
from edgeattn.blocks.ulsam import ULSAM

__all__ = [
    "Attention",
    "Mlp",
    "ELA",
    "ELA_VARIANTS",
    "ULSAM",
    "ConvBN",
    "RepConv",
    "MultiGroupConv1x1",
    "GMLP",
    "RLMHSA",
    "CFB",
    "HFBlock",
    "FMBlock",
    "RMSNorm",
    "LlamaAttention",
    "SwiGLU",
    "LlamaBlock",
    "fuse_bn",
    "fuse_bn_into_linear",
    "grouped_to_dense",
    "identity_kernel",
]
