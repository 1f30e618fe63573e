"""EdgeQAT losses and the attention-fidelity metric against float64 references written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from edgeattn.quant.losses import Probe, attention_kl, distribution_loss, entropy_loss, kd_loss
from torch import nn


def test_entropy_loss_matches_the_formula_in_float64():
    g = torch.Generator().manual_seed(0)
    qs = [torch.randn(2, 3, 5, 4, generator=g) * s for s in (0.5, 2.0)]
    ks = [torch.randn(2, 3, 5, 4, generator=g) for _ in range(2)]
    total = 0.0
    for q, k in zip(qs, ks, strict=True):
        qn, kn = q.double().numpy(), k.double().numpy()
        total += np.log1p(qn.var(axis=-1)).sum() + np.log1p(kn.var(axis=-1)).sum()
    expected = -0.5 * math.log(total)
    assert float(entropy_loss(qs, ks)) == pytest.approx(expected, rel=1e-5)


def test_entropy_loss_falls_when_q_k_spread_out():
    q = torch.randn(1, 1, 8, 4)
    assert float(entropy_loss([q * 3], [q * 3])) < float(entropy_loss([q], [q]))


def test_distribution_loss_hand_case_and_sign():
    # rows [1, 0] vs [1, 1] -> cos = 1/sqrt(2); identical rows -> cos = 1
    s = torch.tensor([[[[1.0, 0.0], [2.0, 2.0]]]])
    t = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]]])
    expected = -math.log((1 / math.sqrt(2) + 1.0) / 2)
    assert float(distribution_loss([s], [t])) == pytest.approx(expected, rel=1e-6)
    assert float(distribution_loss([t], [t])) == pytest.approx(0.0, abs=1e-6)


def test_distribution_loss_row_floor_bounds_a_zeroed_row_by_hand():
    # row 0 quantized to zero, row 1 equal to its teacher: cos = 0 and 1, mean 0.5, loss -log 0.5. With the floor
    # d, row 0's cosine is s.t / (d ||t|| * ||t||), so dL/ds0 = -(1 / 0.5) * (1 / 2) * t0 / (d ||t0||^2)
    d = 1e-3
    s = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[[[3.0, 4.0], [1.0, 1.0]]]], dtype=torch.float64)
    loss = distribution_loss([s], [t], row_floor=d)
    loss.backward()
    assert loss.item() == pytest.approx(-math.log(0.5), rel=1e-12)
    assert s.grad[0, 0, 0].tolist() == pytest.approx([-3.0 / (d * 25.0), -4.0 / (d * 25.0)], rel=1e-9)
    assert s.grad[0, 0, 1].tolist() == pytest.approx([0.0, 0.0], abs=1e-9)  # already aligned
    # |dL/ds0| = 1 / (d ||t0||) = 200; without the floor only the 1e-8 eps bounds it: 1 / eps = 1e8
    s.grad = None
    distribution_loss([s], [t], row_floor=0.0).backward()
    assert float(s.grad[0, 0, 0].norm()) == pytest.approx(1.0 / 1e-8, rel=1e-6)


def test_distribution_loss_row_floor_leaves_ordinary_rows_alone():
    # rows well above the floor: value and gradient equal the plain cosine (torch.cosine_similarity, float64)
    torch.manual_seed(0)
    t = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    s = (t + 0.5 * torch.randn_like(t)).requires_grad_(True)
    loss = distribution_loss([s], [t])
    (grad,) = torch.autograd.grad(loss, s)
    ref = -torch.log(torch.nn.functional.cosine_similarity(s, t, dim=-1).mean())
    (ref_grad,) = torch.autograd.grad(ref, s)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("offset", [1.0, 0.0])  # a student near its teacher, and an unrelated one (cos <= 0)
def test_minimising_distribution_loss_increases_similarity(offset):
    # the published code has the sign reversed; ours must pull the student's logits towards the teacher's
    torch.manual_seed(0)
    teacher = torch.randn(2, 2, 4, 4)
    student = (offset * teacher + torch.randn(2, 2, 4, 4)).requires_grad_(True)
    cos_before = torch.nn.functional.cosine_similarity(student, teacher, dim=-1).mean().item()
    opt = torch.optim.SGD([student], lr=0.05)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = distribution_loss([student], [teacher])
        losses.append(loss.item())
        loss.backward()
        opt.step()
    cos_after = torch.nn.functional.cosine_similarity(student, teacher, dim=-1).mean().item()
    assert cos_after > cos_before + 1e-3
    assert losses[-1] < losses[0]


def test_kd_loss_matches_manual_float64():
    torch.manual_seed(1)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    T, alpha = 2.0, 0.5
    sn, tn = s.double().numpy(), t.double().numpy()

    def log_softmax(a):
        a = a - a.max(axis=-1, keepdims=True)
        return a - np.log(np.exp(a).sum(axis=-1, keepdims=True))

    ce = -log_softmax(sn)[np.arange(6), y.numpy()].mean()
    pt = np.exp(log_softmax(tn / T))
    kl = (pt * (log_softmax(tn / T) - log_softmax(sn / T))).sum(axis=-1).mean()
    expected = (1 - alpha) * ce + alpha * T * T * kl
    assert float(kd_loss(s, t, y, alpha=alpha, temperature=T)) == pytest.approx(expected, rel=1e-5)
    # language-model shaped logits (B, T, V) flatten the same way
    s3, t3, y3 = s.reshape(2, 3, 5), t.reshape(2, 3, 5), y.reshape(2, 3)
    assert float(kd_loss(s3, t3, y3)) == pytest.approx(expected, rel=1e-5)


def test_attention_kl_hand_case():
    p = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])
    q = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]]]])
    row0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(attention_kl([q], [p])) == pytest.approx(row0 / 2, rel=1e-6)
    assert float(attention_kl([p], [p])) == pytest.approx(0.0, abs=1e-9)


def test_probe_records_in_forward_order():
    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)
            self.logits_probe = nn.Identity()

        def forward(self, x):
            return self.logits_probe(self.fc(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = Layer(), Layer()

        def forward(self, x):
            return self.b(self.a(x))

    net = Net()
    x = torch.randn(3, 2)
    with Probe(net, ["logits_probe"]) as probe:
        net(x)
    assert len(probe["logits_probe"]) == 2
    torch.testing.assert_close(probe["logits_probe"][0], net.a.fc(x))
    net(x)  # hooks are gone after the block
    assert len(probe["logits_probe"]) == 2
