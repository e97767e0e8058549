"""learners.recovery: the one recovery every method's reward goes through."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from learners.recovery import (
    BatchNormReference,
    RecoveryRecipe,
    batchnorm_reference,
    batchnorm_stats,
    recover,
    shift_batchnorm,
    update_batchnorm,
)
from learners.training import recalibrate_batchnorm
from pf_envs.data import CIFAR10_MEAN, CIFAR10_STD, TensorSplit


def _split(n: int, seed: int) -> TensorSplit:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return TensorSplit("synthetic", images, labels, CIFAR10_MEAN, CIFAR10_STD)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()


def test_update_bn_gives_exactly_the_statistics_of_recalibrate_batchnorm():
    """``torch.optim.swa_utils.update_bn`` (used) and the project's own loop agree bit for bit."""
    data = _split(96, 0)
    a, b = _model(), _model()
    batches = list(data.batches(32, augment=True, generator=torch.Generator().manual_seed(3)))
    update_batchnorm(a, batches)
    recalibrate_batchnorm(b, batches)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["1.running_mean"], _model().state_dict()["1.running_mean"])  # really re-estimated
    assert not a.training


def test_recover_is_deterministic_and_the_step_hook_keeps_masks():
    train, bn, val = _split(256, 1), _split(64, 2), _split(64, 3)
    recipe = RecoveryRecipe(ft_iters=5, ft_batch_size=16, ft_lr=0.05, bn_batch_size=32)
    mask = torch.ones_like(_model()[0].weight)
    mask[:4] = 0  # half the first conv's filters pruned: fine-tuning must not bring them back

    def keep_mask(model: nn.Module, step: int) -> None:
        with torch.no_grad():
            model[0].weight.mul_(mask)

    runs = []
    for _ in range(2):
        model = _model()
        with torch.no_grad():
            model[0].weight.mul_(mask)
        out = recover(model, recipe=recipe, train_data=train, bn_data=bn, eval_data=val, ft_seed=7,
                      step_hook=keep_mask)
        runs.append((out.accuracy, copy.deepcopy(model.state_dict())))
        assert torch.count_nonzero(model[0].weight[:4]) == 0
        assert set(out.timing) == {"finetune_s", "bn_s", "eval_s"}
        assert not any(p.requires_grad for p in model.parameters())
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    # without the hook the pruned filters come back to life
    model = _model()
    with torch.no_grad():
        model[0].weight.mul_(mask)
    recover(model, recipe=recipe, train_data=train, bn_data=bn, eval_data=val, ft_seed=7)
    assert torch.count_nonzero(model[0].weight[:4]) > 0


def test_no_fine_tuning_changes_only_batchnorm():
    train, bn, val = _split(64, 1), _split(64, 2), _split(64, 3)
    model, before = _model(), _model().state_dict()
    recover(model, recipe=RecoveryRecipe(ft_iters=0, bn_batch_size=32), train_data=train, bn_data=bn, eval_data=val)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("1.", "4.")) for k in changed)  # the BatchNorm layers only


def test_recipe_is_recorded_as_a_dict():
    assert RecoveryRecipe().as_dict() == pytest.approx(
        {"ft_iters": 100, "ft_batch_size": 64, "ft_lr": 0.01, "bn_batch_size": 128, "bn_augment": True, "bn_seed": 3}
    )


def test_recipe_records_bn_mode_only_when_not_the_default():
    assert "bn_mode" not in RecoveryRecipe().as_dict()
    assert RecoveryRecipe(bn_mode="shift").as_dict()["bn_mode"] == "shift"
    with pytest.raises(ValueError, match="bn_mode must be one of"):
        RecoveryRecipe(bn_mode="shfit")


def test_shift_keeps_original_statistics_for_an_unchanged_candidate_and_moves_them_for_a_changed_one():
    bn = _split(96, 2)
    recipe = RecoveryRecipe(ft_iters=0, bn_batch_size=32, bn_mode="shift")
    batches = list(bn.batches(32, augment=True, generator=torch.Generator().manual_seed(recipe.bn_seed)))
    model = _model()
    with torch.no_grad():  # statistics that differ from what the batches give
        model[1].running_mean.fill_(0.3)
        model[4].running_var.fill_(2.0)
    ref = batchnorm_reference(model, batches)
    assert torch.equal(ref.original["1"][0], model[1].running_mean)  # the model itself is untouched
    same = copy.deepcopy(model)
    recover(same, recipe=recipe, train_data=bn, bn_data=bn, eval_data=bn, bn_reference=ref)
    for name, (mean, var) in batchnorm_stats(same).items():
        assert torch.allclose(mean, ref.original[name][0], atol=1e-6)
        assert torch.allclose(var, ref.original[name][1], rtol=1e-5)
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed[0].weight.mul_(1.5)  # the first BatchNorm's input scales by 1.5
    recover(changed, recipe=recipe, train_data=bn, bn_data=bn, eval_data=bn, bn_reference=ref)
    mean0, var0 = ref.original["1"]
    mean_e, var_e = ref.estimated["1"]
    bias = model[0].bias
    expected_mean = mean0 + (1.5 * (mean_e - bias) + bias - mean_e)
    assert torch.allclose(changed[1].running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(changed[1].running_var, var0 * 2.25, rtol=1e-3)


def test_shift_needs_a_reference_and_matching_layers():
    bn = _split(64, 2)
    with pytest.raises(ValueError, match="needs bn_reference"):
        recover(_model(), recipe=RecoveryRecipe(ft_iters=0, bn_mode="shift"), train_data=bn, bn_data=bn, eval_data=bn)
    ref = batchnorm_reference(_model(), bn.batches(32))
    pruned = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="bn_mode='reestimate'"):
        shift_batchnorm(pruned, ref)
    round_trip = BatchNormReference.from_lists(ref.to_lists())
    assert all(torch.equal(round_trip.original[k][1], ref.original[k][1]) for k in ref.original)


def test_empty_batchnorm_data_leaves_the_statistics():
    model, before = _model(), _model().state_dict()
    empty = _split(64, 2).subset(0)
    recover(model, recipe=RecoveryRecipe(ft_iters=0), train_data=empty, bn_data=empty, eval_data=_split(32, 3))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_ft_bf16_and_ft_capture_are_env_kwargs_left_out_of_the_fingerprint_at_their_defaults(cifar_root):
    """Issue 22: the GPU recovery settings are kwargs of every fine-tuning env; at their
    defaults the recovery fingerprint is the one recorded runs hold (the golden test pins it),
    bf16 changes it (it changes the arithmetic), and QuantORT (no fine-tuning) refuses them."""
    import gymnasium as gym
    from conftest import SMALL_ENV_KWARGS

    import pf_envs  # noqa: F401

    base = gym.make("ChannelPrune-ResNet20-v0", **SMALL_ENV_KWARGS).unwrapped
    same = gym.make("ChannelPrune-ResNet20-v0", **SMALL_ENV_KWARGS, ft_bf16=False, ft_capture=False).unwrapped
    bf16 = gym.make("ChannelPrune-ResNet20-v0", **SMALL_ENV_KWARGS, ft_bf16=True).unwrapped
    assert base.recipe.ft_bf16 is False and bf16.recipe.ft_bf16 is True
    assert same.recovery_fingerprint == base.recovery_fingerprint != bf16.recovery_fingerprint
    assert base.recovery_fingerprint_with({"ft_bf16": True}) == bf16.recovery_fingerprint
    with pytest.raises(TypeError, match="unknown keyword"):
        gym.make("QuantORT-ResNet20-v0", ft_capture=True)
