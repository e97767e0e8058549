"""learners.backend_guards: pruned shapes that crash PyTorch's oneDNN CPU kernels train safely."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from learners.backend_guards import guard_strided_pointwise, needs_guard

REPO = Path(__file__).resolve().parents[1]


def test_which_convolutions_are_guarded():
    assert needs_guard(nn.Conv2d(4, 16, 1, stride=2))
    assert needs_guard(nn.Conv2d(2, 8, 1, stride=(2, 2), bias=False))
    assert not needs_guard(nn.Conv2d(8, 16, 1, stride=2))  # 8+ input channels: fine
    assert not needs_guard(nn.Conv2d(1, 16, 1, stride=2))
    assert not needs_guard(nn.Conv2d(4, 16, 1, stride=1))
    assert not needs_guard(nn.Conv2d(4, 16, 3, stride=2, padding=1))
    assert not needs_guard(nn.Linear(4, 16))


def test_guard_is_registered_once_and_changes_no_number():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 16, 1, stride=2),
                          nn.Conv2d(16, 16, 1, stride=2))
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    before = model(x)
    assert guard_strided_pointwise(model) == 1
    assert guard_strided_pointwise(model) == 1
    assert len(model[2]._forward_pre_hooks) == 1 and not model[3]._forward_pre_hooks
    assert torch.allclose(model(x), before, atol=1e-6)


def test_training_a_guarded_pruned_shortcut_does_not_crash():
    """The crashing case (torch 2.14.1, oneDNN): the weight gradient of Conv2d(4, 16, 1,
    stride=2) on a channels-last input. Run in a child process: a regression kills that
    process, not the test session."""
    code = textwrap.dedent("""
        import torch
        from torch import nn
        from learners.training import finetune
        from pf_envs.data import CIFAR10_MEAN, CIFAR10_STD, TensorSplit
        torch.manual_seed(0)
        torch.set_num_threads(1)
        g = torch.Generator().manual_seed(0)
        data = TensorSplit("synthetic", torch.randint(0, 256, (256, 3, 32, 32), generator=g, dtype=torch.uint8),
                           torch.randint(0, 10, (256,), generator=g), CIFAR10_MEAN, CIFAR10_STD)
        model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Conv2d(4, 16, 1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        finetune(model, data, 8, batch_size=64, lr=0.01, generator=torch.Generator().manual_seed(1))
        print("trained")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "trained" in proc.stdout, proc.stderr[-2000:]
