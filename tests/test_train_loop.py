"""The one training loop (learners.training.run_steps): per-step hooks, no host syncs, the
CUDA-graph capture (CUDA only), stopping and resuming, fine-tuning's arithmetic unchanged."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from learners.training import (
    RunningTotals,
    TrainConfig,
    cross_entropy_loss,
    finetune,
    make_sgd,
    run_steps,
    train,
)
from pf_envs.data import TensorSplit

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _split(n: int = 64, seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return TensorSplit("t", images, torch.randint(0, 4, (n,), generator=g), (0.5,) * 3, (0.25,) * 3, num_classes=4)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 4))


def _quiet(_: str) -> None:
    pass


def test_train_runs_the_step_hook_after_every_step_with_the_model():
    model, calls = _model(), []
    train(model, _split(), TrainConfig(epochs=2, batch_size=16), log=_quiet,
          step_hook=lambda m, step: calls.append((m is model, step)))
    assert calls == [(True, s) for s in range(1, 9)]


def test_a_hook_that_changes_weights_is_seen_by_the_next_step():
    """A masking hook (as sparsity keeps its zeros) holds through training."""
    model = _model()
    mask = torch.ones_like(model[0].weight)
    mask[::2] = 0

    def hook(m: nn.Module, step: int) -> None:
        with torch.no_grad():
            m[0].weight.mul_(mask)

    train(model, _split(), TrainConfig(epochs=2, batch_size=16), log=_quiet, step_hook=hook)
    assert (model[0].weight[::2] == 0).all() and (model[0].weight[1::2] != 0).any()


class _Syncs(TorchFunctionMode):
    """Records the calls that read a tensor's value on the host (a sync on a GPU)."""

    READS = {"item", "tolist", "__bool__", "__float__", "__int__", "numpy", "cpu"}

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_the_step_loop_reads_nothing_back_until_asked():
    model, data = _model(), _split()
    opt = make_sgd(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    totals = RunningTotals()
    batches = list(data.batches(16, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0)))
    with _Syncs() as mode:
        taken = run_steps(model.train(), opt, batches, lr_at=lambda s: 0.05, step_loss=cross_entropy_loss(),
                          totals=totals)
    assert taken == 4 and mode.calls == []
    with _Syncs() as mode:
        sums = totals.read()
    assert len(mode.calls) == 1 and totals.seen == 64 and 0 <= sums["acc"] <= 1 and sums["loss"] > 0
    read_at: list[int] = []
    run_steps(model, opt, batches, lr_at=lambda s: 0.05, step_loss=cross_entropy_loss(), totals=totals,
              on_read=lambda step, t: read_at.append(step), read_every=2)
    assert read_at == [1, 3]


def _old_finetune(model, data, iterations, *, batch_size, lr, generator):
    """fine-tuning as written before the loop was shared (the reference for its arithmetic)."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=4e-5)
    model.train()
    step = 0
    while step < iterations:
        for images, labels in data.batches(batch_size, shuffle=True, augment=True, generator=generator, drop_last=True):
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / iterations))
            loss = nn.functional.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= iterations:
                break
    return model.eval()


def test_finetune_does_what_it_did_before_the_loop_was_shared():
    """The environments' recovery (and so their recorded scores) depends on it bit for bit."""
    data = _split()
    new = finetune(_model(), data, 7, batch_size=16, lr=0.05, generator=torch.Generator().manual_seed(1))
    old = _old_finetune(_model(), data, 7, batch_size=16, lr=0.05, generator=torch.Generator().manual_seed(1))
    for (k, a), b in zip(new.state_dict().items(), old.state_dict().values()):
        assert torch.equal(a, b), k


def test_capture_is_ignored_without_cuda():
    cfg = TrainConfig(epochs=1, batch_size=16)
    a, b = _model(), _model()
    train(a, _split(), cfg, log=_quiet)
    train(b, _split(), TrainConfig(epochs=1, batch_size=16, capture=True), log=_quiet, device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_should_stop_leaves_a_state_that_resumes_to_the_uninterrupted_weights(tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05)
    whole = _model()
    train(whole, _split(), cfg, log=_quiet)
    state = tmp_path / "run.state"
    stopped = train(_model(), _split(), cfg, state_path=state, log=_quiet, should_stop=lambda: True)
    assert len(stopped) == 1 and torch.load(state, weights_only=True)["epoch"] == 1
    resumed = _model()
    history = train(resumed, _split(), cfg, state_path=state, log=_quiet)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(torch.equal(x, y) for x, y in zip(whole.state_dict().values(), resumed.state_dict().values()))


@needs_cuda
def test_no_host_sync_in_the_cuda_step_loop():
    model, data = _model().cuda(), _split().to("cuda")
    opt = make_sgd(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    batches = data.batches(16, shuffle=True, augment=True, generator=torch.Generator().manual_seed(0))
    totals = RunningTotals("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_steps(model.train(), opt, batches, lr_at=lambda s: 0.05, step_loss=cross_entropy_loss(),
                  device="cuda", totals=totals)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert totals.seen == 64


@needs_cuda
def test_captured_training_follows_the_eager_one():
    cfg, captured_cfg = TrainConfig(epochs=2, batch_size=16), TrainConfig(epochs=2, batch_size=16, capture=True)
    eager, captured = _model(), _model()
    h1 = train(eager, _split(128), cfg, log=_quiet, device="cuda")
    h2 = train(captured, _split(128), captured_cfg, log=_quiet, device="cuda")
    assert h1[-1]["train_loss"] == pytest.approx(h2[-1]["train_loss"], rel=1e-3)
    for a, b in zip(eager.state_dict().values(), captured.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-3, rtol=1e-2)  # fused SGD vs foreach: rounding
