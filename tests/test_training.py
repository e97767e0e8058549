"""Base-model training: resume after a kill, stochastic weight averaging, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learners.training import TrainConfig, train
from pf_envs.data import TensorSplit


def _split(n: int = 96, seed: int = 0) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 4, (n,), generator=g)
    return TensorSplit("train", images, labels, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=4)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


class _KilledAfter:
    """A split whose ``batches`` raises on its ``n``-th call: a run killed mid-epoch."""

    def __init__(self, split: TensorSplit, n: int) -> None:
        self.split, self.n, self.calls = split, n, 0

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.split.batches(*args, **kwargs)


def _quiet(_: str) -> None:
    pass


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("swa_epochs", [0, 2])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, swa_epochs):
    cfg = TrainConfig(epochs=2, swa_epochs=swa_epochs, batch_size=16, lr=0.05)
    data, val = _split(), _split(32, seed=1)
    whole = _model()
    history = train(whole, data, cfg, eval_data=val, log=_quiet, swa_eval_bn_images=32)
    assert [h["epoch"] for h in history] == list(range(1, 3 + swa_epochs))

    state = tmp_path / "run.state"
    killed = _model()
    # calls: 1 per epoch, plus 1 per SWA epoch for its BatchNorm estimate; die in epoch 2
    # (or in the second SWA epoch), after the state of the epoch before was written
    die_at = 2 if not swa_epochs else 5
    with pytest.raises(KeyboardInterrupt):
        train(killed, _KilledAfter(data, die_at), cfg, eval_data=val, state_path=state, log=_quiet,
              swa_eval_bn_images=32)
    assert state.is_file()
    resumed = _model()
    logs: list[str] = []
    history2 = train(resumed, data, cfg, eval_data=val, state_path=state, log=logs.append, swa_eval_bn_images=32)
    assert any("resuming" in line for line in logs)
    assert [h["epoch"] for h in history2] == [h["epoch"] for h in history]
    assert _same_weights(resumed, whole)


def test_a_state_from_before_the_swa_settings_still_resumes(tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05)
    state = tmp_path / "run.state"
    with pytest.raises(KeyboardInterrupt):
        train(_model(), _KilledAfter(_split(), 2), cfg, state_path=state, log=_quiet)
    saved = torch.load(state, weights_only=True)  # the state holds tensors, numbers and strings only
    for key in ("swa_epochs", "swa_lr"):  # what an older version wrote
        del saved["config"][key]
    torch.save(saved, state)
    logs: list[str] = []
    history = train(_model(), _split(), cfg, state_path=state, log=logs.append)
    assert any("resuming" in line for line in logs) and [h["epoch"] for h in history] == [1, 2]


def test_swa_returns_the_average_of_the_cycle_end_weights():
    cfg = TrainConfig(epochs=1, swa_epochs=3, batch_size=16, lr=0.05, swa_lr=0.05)
    model = _model()
    snapshots: list[dict[str, torch.Tensor]] = []

    def log(line: str) -> None:  # called once per epoch, after the epoch's update
        snapshots.append({k: v.clone() for k, v in model.named_parameters()})

    history = train(model, _split(), cfg, eval_data=_split(32, seed=1), log=log, swa_eval_bn_images=32)
    assert "swa_val_acc" not in history[0] and all("swa_val_acc" in h for h in history[1:])
    assert [h.get("swa_averaged") for h in history] == [None, 1, 2, 3]
    swa_snapshots = snapshots[1:]
    for name, value in model.named_parameters():
        expected = torch.stack([s[name] for s in swa_snapshots]).mean(0)
        torch.testing.assert_close(value, expected)
        assert not torch.equal(value, swa_snapshots[-1][name])  # an average, not the last weights
    # BatchNorm statistics were re-estimated for the average: they are not the initial ones
    bn = model[1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_swa_learning_rate_cycles_once_per_epoch():
    from learners.training import _lr_at

    cfg = TrainConfig(epochs=2, swa_epochs=2, lr=0.1, swa_lr=0.02, warmup_epochs=0)
    steps = 10
    assert _lr_at(cfg, 0, steps) == pytest.approx(0.1)
    assert _lr_at(cfg, 19, steps) < 0.01  # main schedule ends near 0
    assert _lr_at(cfg, 20, steps) == pytest.approx(0.02)  # each SWA epoch restarts at swa_lr
    assert _lr_at(cfg, 29, steps) < 0.001
    assert _lr_at(cfg, 30, steps) == pytest.approx(0.02)


def test_bad_configs_and_a_corrupt_state_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        TrainConfig(epochs=0, swa_epochs=0)
    with pytest.raises(ValueError, match="must be >= 0"):
        TrainConfig(epochs=-1)
    state = tmp_path / "run.state"
    state.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="delete it"):
        train(_model(), _split(), TrainConfig(epochs=1, batch_size=16), state_path=state, log=_quiet)
    torch.save({"config": {"epochs": 99}}, state)
    with pytest.raises(ValueError, match="another config"):
        train(_model(), _split(), TrainConfig(epochs=1, batch_size=16), state_path=state, log=_quiet)
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(_model(), _split(8), TrainConfig(epochs=1, batch_size=16), log=_quiet)
