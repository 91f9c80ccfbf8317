"""Autograd modes: what a layer builds under ``inference_mode``/``no_grad`` never reaches a
later training call's backward (evaluate, then fine-tune, is an everyday workflow)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hnets.models import HNetMNIST
from hnets.nn import HBatchNorm, HBlock, HConv2d, HNonLinearity

IMPLS = ["auto", "dense", "dense-nchw", "gauss", "karatsuba"]


def _model(impl: str, seed: int = 0) -> HNetMNIST:
    torch.manual_seed(seed)
    model = HNetMNIST(width=0.5)
    for conv in model.modules():
        eligible = impl != "karatsuba" or getattr(conv, "karatsuba_map", None) is not None
        if isinstance(conv, HConv2d) and conv.in_max_order > 0 and eligible:
            conv.impl = impl
    return model


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_evaluating_first_then_training_works_for_every_scheme(impl, mode) -> None:
    model = _model(impl)
    x, y = _batch()
    model.eval()
    with getattr(torch, mode)():
        before = model(x)
    model.train()
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():  # the training call changed batch-norm statistics only
        assert model(x).shape == before.shape


def test_a_loaded_pretrained_model_can_be_checked_then_fine_tuned() -> None:
    from hnets import get_model

    model = get_model("hnet-rotmnist", pretrained=True)
    x, y = _batch(8)
    model.eval()
    with torch.inference_mode():
        first = model(x)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    weights = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(weights, model.parameters(), strict=True))
    model.eval()
    with torch.inference_mode():
        assert not torch.equal(model(x), first)  # the step changed the model


_STEPS = st.sampled_from(
    [
        "train_step",
        "eval_inference",
        "eval_no_grad",
        "train_no_grad",
        "eval_grad",
        "train_inference",
    ]
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEPS, min_size=2, max_size=7), impl=st.sampled_from(IMPLS))
def test_any_sequence_of_modes_runs_and_inference_agrees_with_no_grad(steps, impl) -> None:
    """Random sequences of training steps and evaluations under every autograd mode run
    without error, and at every point inference_mode and no_grad give the same outputs."""
    torch.manual_seed(0)
    conv = HConv2d(1, 4, 5, max_order=1, in_max_order=0)
    block = HBlock(HConv2d(4, 4, 5, max_order=1), HNonLinearity(4, 1), HBatchNorm(4, 1), pool=2)
    head = HConv2d(4, 3, 3, max_order=0, in_max_order=1)
    for layer in (block.conv,):
        if impl != "karatsuba" or layer.karatsuba_map is not None:
            layer.impl = impl
    model = torch.nn.Sequential(conv, block, head)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(3, 1, 12, 12)
    for step in steps:
        training = step.startswith("train")
        model.train(training)
        if step == "train_step":
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        elif step == "eval_grad":  # e.g. a saliency map: gradients in eval mode
            xg = x.clone().requires_grad_()
            model(xg).square().sum().backward()
            assert xg.grad is not None and torch.isfinite(xg.grad).all()
        else:
            mode = torch.inference_mode if step.endswith("inference") else torch.no_grad
            state = copy.deepcopy(model.state_dict())  # training-mode calls move BN stats
            with mode():
                out = model(x)
            model.load_state_dict(state)
            other = torch.no_grad if mode is torch.inference_mode else torch.inference_mode
            with other():
                again = model(x)
            model.load_state_dict(state)
            torch.testing.assert_close(out.clone(), again.clone(), rtol=1e-5, atol=1e-6)
