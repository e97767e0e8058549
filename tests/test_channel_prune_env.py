"""ChannelPrune environments, generated from the registry table."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import SMALL_ENV_KWARGS, make_env, play
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn

import pf_envs
from learners.training import evaluate
from pf_envs import zoo
from pf_envs.layers import count_macs

MODEL_IDS = [i for i in pf_envs.env_ids("ChannelPrune") if i != "ChannelPrune-v0"]


def make(env_id: str, checkpoints, **kwargs) -> gym.Env:
    return make_env(env_id, checkpoints, SMALL_ENV_KWARGS, **kwargs)


def test_registry_ids():
    assert set(MODEL_IDS) == {f"ChannelPrune-{m}-v0" for m in ("MobileNetV1", "MobileNetV2", "ResNet20", "ResNet56")}
    for env_id in pf_envs.ENV_IDS:
        assert env_id in gym.registry


@pytest.mark.parametrize("env_id", MODEL_IDS)
def test_env_checkers(env_id, cifar_root, checkpoints):
    env = make(env_id, checkpoints)
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)
    reward, info = play(env, lambda t: 0.0)
    assert isinstance(reward, float) and 0.0 <= info["accuracy"] <= 1.0
    assert info["flops_ratio"] <= env.unwrapped.flops_budget + 1e-9


@pytest.mark.parametrize("env_id", MODEL_IDS)
@pytest.mark.parametrize("budget", [0.3, 0.5, 0.8])
def test_budget_never_exceeded(env_id, budget, cifar_root, checkpoints):
    env = make(env_id, checkpoints, flops_budget=budget)
    rng = np.random.default_rng(0)
    policies = [lambda t: -1.0, lambda t: 1.0, lambda t: 1.0 if t % 2 else -1.0, lambda t: -1.0 if t % 2 else 1.0]
    policies += [lambda t, r=rng.uniform(-1, 1, 100): r[t] for _ in range(20)]
    for i, policy in enumerate(policies):
        _, info = play(env, policy, seed=i, dry_run=True)
        assert info["flops_ratio"] <= budget + 1e-9, (i, info["keep_ratios"])
        assert all(0.0 < k <= 1.0 for k in info["keep_ratios"])


def test_compressed_model_is_smaller_and_matches_info(cifar_root, checkpoints):
    env = make("ChannelPrune-ResNet20-v0", checkpoints, flops_budget=0.5)
    _, info = play(env, lambda t: 0.3 if t % 3 else -0.5)
    u = env.unwrapped
    pruned = u.compressed_model()
    assert count_macs(pruned, 32) == pytest.approx(info["flops_ratio"] * u.total_macs, rel=1e-9)
    n_params = sum(p.numel() for p in pruned.parameters())
    assert n_params == pytest.approx(info["params_ratio"] * u.total_params) and info["params_ratio"] < 0.9
    assert evaluate(pruned, u.reward_data) == info["accuracy"]
    assert info["accuracy_original"] == u.accuracy_original
    assert len(info["keep_ratios"]) == u.num_steps == len(info["keep_counts"])
    assert info["reward_components"] == {"accuracy": info["accuracy"]}


def test_same_seed_same_episode(cifar_root, checkpoints):
    env = make("ChannelPrune-ResNet20-v0", checkpoints, ft_iters=3, ft_batch_size=16)
    a = play(env, lambda t: 0.1 * t - 0.5, seed=7)
    b = play(env, lambda t: 0.1 * t - 0.5, seed=7)
    assert a[0] == b[0] and a[1]["keep_ratios"] == b[1]["keep_ratios"]


def test_acc_log_flops_reward(cifar_root, checkpoints):
    env = make("ChannelPrune-ResNet20-v0", checkpoints, reward="acc_log_flops")
    reward, info = play(env, lambda t: 0.0)
    assert reward == pytest.approx(-(1 - info["accuracy"]) * np.log(info["macs"]))


def test_observation_layout(cifar_root, checkpoints):
    env = make("ChannelPrune-MobileNetV1-v0", checkpoints)
    obs, info = env.reset(seed=0)
    u = env.unwrapped
    assert obs.shape == (11,) and len(u.observation_features()) == 11
    assert u.num_steps == 14 and info["num_steps"] == 14
    assert obs[0] == 0.0 and obs[-3] == 0.0 and obs[-1] == 1.0  # step 0, nothing reduced yet
    obs2, _, _, _, step_info = env.step(np.array([-1.0], np.float32))
    assert obs2[0] > 0 and obs2[-3] > 0 and obs2[-1] == pytest.approx(step_info["applied"])


def test_custom_model(cifar_root):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )
    env = gym.make("ChannelPrune-v0", model=model, dataset="cifar10", input_size=32, **SMALL_ENV_KWARGS)
    assert env.unwrapped.num_steps == 2
    _, info = play(env, lambda t: -1.0)
    assert info["flops_ratio"] <= 0.5 + 1e-9
    assert env.unwrapped.compressed_model()[0].out_channels < 32


def test_nan_action_is_a_clear_error(cifar_root, checkpoints):
    env = make("ChannelPrune-ResNet20-v0", checkpoints)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.unwrapped.step(np.array([np.nan], np.float32))
    with pytest.raises(RuntimeError, match="reset"):
        play(env, lambda t: 0.0)
        env.unwrapped.step(np.array([0.0], np.float32))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"flops_budgte": 0.5}, "flops_budget"),
        ({"flops_budget": 1.5}, r"\(0, 1\]"),
        ({"flops_budget": 0.01}, "unreachable"),
        ({"reward": "speed"}, "acc_log_flops"),
        ({"selection": "random"}, "lasso"),
        ({"dataset": "mnist"}, "cifar10"),
        ({"ft_iters": -1}, "ft_iters must be an integer >= 0"),
        ({"ft_lr": 0.0}, r"ft_lr must be a finite number > 0"),
        ({"ft_lr": float("nan")}, r"ft_lr must be a finite number > 0"),
        # wrong types and ranges are refused, never coerced (issue 16, defect 8)
        ({"channel_round": 0}, "channel_round must be an integer >= 1"),
        ({"channel_round": 2.5}, "channel_round must be an integer >= 1"),
        ({"flops_budget": True}, r"flops_budget must be a finite number in \(0, 1\]"),
        ({"flops_budget": "0.5"}, r"flops_budget must be a finite number in \(0, 1\]"),
        ({"input_size": 0}, "input_size must be an integer >= 1"),
        ({"input_size": 16}, "input_size=16 but the cifar10 images are 32x32"),
        ({"input_size": 64}, "input_size=64 but the cifar10 images are 32x32"),
        ({"reward_samples": 10.0}, "reward_samples must be an integer"),
        ({"bn_augment": "yes"}, "bn_augment must be True or False"),
        ({"min_keep": 0}, r"min_keep must be a finite number in \(0, 1\]"),
        ({"reward_split": "train"}, "reward_split"),
        ({"render_mode": "human"}, "no rendering"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_kwargs(kwargs, match, cifar_root, checkpoints):
    with pytest.raises((TypeError, ValueError), match=match):
        make("ChannelPrune-ResNet20-v0", checkpoints, **kwargs)


def test_unshipped_checkpoint_is_a_clear_error(cifar_root, monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "CHECKPOINT_DIR", tmp_path)
    with pytest.raises(zoo.CheckpointError, match="no trained cifar10 checkpoint"):
        gym.make("ChannelPrune-ResNet56-v0", **SMALL_ENV_KWARGS)


def test_a_base_model_near_chance_is_warned_about(cifar_root, recwarn):
    from pf_envs.zoo import create_model

    torch.manual_seed(0)
    untrained = create_model("resnet20", "cifar10")  # random weights: about 1 in 10 right
    with pytest.warns(UserWarning, match=r"scores 0\.\d+ on 200 val images, near chance \(0\.1 for 10 classes\)"):
        env = gym.make("ChannelPrune-v0", model=untrained, **SMALL_ENV_KWARGS)
    assert env.unwrapped.accuracy_original < 0.2
    recwarn.clear()
    trained = gym.make("ChannelPrune-ResNet20-v0", **SMALL_ENV_KWARGS)  # the shipped checkpoint: no word
    assert trained.unwrapped.accuracy_original > 0.8
    assert not [w for w in recwarn if "near chance" in str(w.message)]


class _GroupedNet(nn.Module):
    """conv1 feeds conv2, a groups=2 convolution (not depthwise), which feeds conv3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, groups=2), nn.BatchNorm2d(32)
        self.conv3, self.bn3 = nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.relu(self.conv4(x)).mean((2, 3)))


def test_a_grouped_convolution_says_which_layers_are_left_out_and_why(cifar_root):
    from pf_envs.envs.channel_prune import channel_table

    table = channel_table(_GroupedNet(), 32)
    assert [g.producers for g in table.groups] == [("conv3",), ("conv4",)]
    assert [left.layers for left in table.left_out] == [("conv1", "conv2"), ("conv2", "conv3")]
    assert "conv2 (groups=2)" in table.left_out[0].reason and "left out" in str(table)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"left out of every prunable group.*conv1, conv2 keep 16 channels.*"
                                         r"grouped convolution conv2 \(groups=2\)"):
        gym.make("ChannelPrune-v0", model=_GroupedNet(), flops_budget=0.6, **SMALL_ENV_KWARGS)
    with pytest.raises(ValueError, match=r"flops_budget=0.05 is unreachable.*still keeps 0\.\d+ of its macs "
                                         r"\(channels left out of every prunable group are always kept: conv1, conv2 "
                                         r"keep 16 channels: .*conv2 \(groups=2\).*\); choose flops_budget >="):
        with pytest.warns(UserWarning):
            gym.make("ChannelPrune-v0", model=_GroupedNet(), flops_budget=0.05, **SMALL_ENV_KWARGS)


def test_unknown_env_id():
    with pytest.raises(gym.error.Error):
        gym.make("ChannelPrune-VGG16-v0")


def test_imagenet_variant_on_tiny_tree(tmp_path):
    from test_data import _write_image_tree

    classes = ["n01", "n02", "n03", "n04"]
    _write_image_tree(tmp_path / "imagenet", classes, per_class=6, size=64, splits=("train", "val"))
    torch.manual_seed(0)
    ckpt = zoo.save_checkpoint(zoo.create_model("mobilenet_v1", "imagenet", num_classes=4), tmp_path / "mb.pt")
    env = gym.make(
        "ChannelPrune-MobileNetV1-v0", dataset="imagenet", data_root=str(tmp_path), checkpoint=str(ckpt),
        ft_iters=1, ft_batch_size=4, reward_samples=8, bn_batches=1, bn_batch_size=4, feature_images=4,
        points_per_image=2, cache=False,
    )
    u = env.unwrapped
    assert u.input_size == 224 and u.table.rows[0].stride == (2, 2)
    _, info = play(env, lambda t: 0.0)
    assert 0.0 <= info["accuracy"] <= 1.0 and info["flops_ratio"] <= 0.5 + 1e-9


def test_async_vector_env(cifar_root, checkpoints):
    ckpt = checkpoints("resnet20")
    kwargs = {**SMALL_ENV_KWARGS, **({"checkpoint": ckpt} if ckpt else {})}
    # "spawn": workers are built from the id and kwargs alone (pickled), and no OpenMP thread
    # pool is inherited through fork (which can deadlock a worker once torch has used threads).
    # "pf_envs:<id>" makes each fresh worker import pf_envs (which registers the ids) first.
    envs = gym.vector.AsyncVectorEnv(
        [lambda: gym.make("pf_envs:ChannelPrune-ResNet20-v0", **kwargs)] * 2, context="spawn"
    )
    try:
        obs, _ = envs.reset(seed=0)
        assert obs.shape == (2, 11)
        obs, reward, term, trunc, _ = envs.step(np.zeros((2, 1), np.float32))
        assert obs.shape == (2, 11) and not term.any()
    finally:
        envs.close()


def test_bn_statistics_are_re_estimated_on_augmented_images(cifar_root, checkpoints):
    """Nothing pruned (budget 1), so the reward isolates the BatchNorm re-estimation: on the
    augmented images the base model's statistics came from, it stays near the original
    accuracy; on plain images it does not match them (the setting is really used)."""
    scores = {}
    for augment in (True, False):
        env = make("ChannelPrune-ResNet20-v0", checkpoints, flops_budget=1.0, bn_augment=augment, bn_batches=8)
        _, info = play(env, lambda t: 1.0)
        assert info["keep_ratios"] == [1.0] * env.unwrapped.num_steps
        scores[augment] = (info["accuracy"], info["accuracy_original"])
    (aug, original), (plain, _) = scores[True], scores[False]
    assert aug != plain, scores
    assert abs(aug - original) <= 0.03, scores


def test_reward_does_not_depend_on_the_episode_seed_without_fine_tuning(cifar_root, checkpoints):
    """With ft_iters=0 the BatchNorm batches (augmentation included) are the same every episode."""
    env = make("ChannelPrune-ResNet20-v0", checkpoints, flops_budget=0.6)
    a = play(env, lambda t: 0.3 - 0.1 * t, seed=1)
    b = play(env, lambda t: 0.3 - 0.1 * t, seed=2)
    assert a[0] == b[0]


def test_fine_tuning_lr_defaults_to_the_zoo_entry(cifar_root, checkpoints):
    """MobileNet-V1's fast fine-tuning runs at its own measured lr; an explicit one wins."""
    assert zoo.get_spec("mobilenet_v1").ft_lr == 0.001 and zoo.get_spec("resnet20").ft_lr == 0.01
    assert make("ChannelPrune-ResNet20-v0", checkpoints).unwrapped.ft_lr == 0.01
    env = make("ChannelPrune-ResNet20-v0", checkpoints, ft_lr=0.003)
    assert env.unwrapped.ft_lr == 0.003
    default = make("ChannelPrune-ResNet20-v0", checkpoints).unwrapped
    assert env.unwrapped.recovery_fingerprint != default.recovery_fingerprint


def test_model_whose_classifier_does_not_match_the_dataset_is_refused(cifar_root):
    """A model with 5 outputs would be scored against CIFAR-10's 10 labels (issue 16, defect 7)."""
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(ValueError, match=r"outputs \(1, 5\).*10 classes"):
        gym.make("ChannelPrune-v0", model=model, **SMALL_ENV_KWARGS)
    with pytest.raises(ValueError, match="does not run"):
        gym.make("ChannelPrune-v0", model=nn.Linear(7, 10), **SMALL_ENV_KWARGS)


def test_replay_of_a_recorded_policy_rebuilds_the_same_candidate(cifar_root, checkpoints):
    """The seam of re-training and export: a recorded policy replays, without an agent, to the
    same pruned model and exactly the recorded reward (ft_iters=0)."""
    env = make("ChannelPrune-ResNet20-v0", checkpoints, flops_budget=0.5)
    reward, info = play(env, lambda t: 0.4 if t % 2 else -0.6, seed=11)
    record = {"applied": info["keep_ratios"], "seed": 11, "reward": reward}
    env_kwargs = {k: v for k, v in env.spec.kwargs.items() if k != "model"}
    out = pf_envs.replay("ChannelPrune-ResNet20-v0", env_kwargs, record)
    assert out.reward == reward == out.recorded_reward
    assert out.info["keep_counts"] == info["keep_counts"]
    original = env.unwrapped.compressed_model().state_dict()
    assert all(torch.equal(original[k], v) for k, v in out.model.state_dict().items())
    with pytest.raises(ValueError, match="steps"):
        pf_envs.replay("ChannelPrune-ResNet20-v0", env_kwargs, info["keep_ratios"][:-1])
    with pytest.raises(ValueError, match="cut by the budget"):
        pf_envs.replay("ChannelPrune-ResNet20-v0", env_kwargs, [1.0] * len(info["keep_ratios"]))


def test_replay_with_fine_tuning_uses_the_recorded_episode_seed(cifar_root, checkpoints):
    """With fine-tuning the record's reset seed picks the same batches (multi-threaded CPU float
    sums may still differ in the last bits, so the weights are compared with a tolerance)."""
    env = make("ChannelPrune-ResNet20-v0", checkpoints, ft_iters=3, ft_batch_size=16)
    # (the policy of test_same_seed_same_episode: fine-tuning models cut to 4-channel groups
    # has been seen to hang or abort inside autograd on torch 2.14.1's CPU build, old code too)
    reward, info = play(env, lambda t: 0.1 * t - 0.5, seed=11)
    original = {k: v.clone() for k, v in env.unwrapped.compressed_model().state_dict().items()}
    again, _ = env.unwrapped.play_policy(info["keep_ratios"], seed=11)
    replayed = env.unwrapped.compressed_model().state_dict()
    assert all(torch.allclose(original[k].float(), v.float(), atol=1e-4) for k, v in replayed.items())
    assert abs(again - reward) <= 0.02


def test_channel_prune_is_a_model_env_on_the_core(cifar_root, checkpoints):
    """Everything a second method needs lives in the core; ChannelPrune only adds its own parts."""
    from pf_envs.core import CompressionEnv
    from pf_envs.envs.channel_prune import ChannelPruneEnv
    from pf_envs.model_env import ModelCompressionEnv

    assert issubclass(ChannelPruneEnv, ModelCompressionEnv) and issubclass(ModelCompressionEnv, CompressionEnv)
    u = make("ChannelPrune-ResNet20-v0", checkpoints).unwrapped
    assert u.cost.name == "macs" and u.cost.reference == u.total_macs
    for t, space in enumerate(u.unit_spaces):  # the grid is the channel counts the env can keep
        c = u.table.groups[u.step_groups[t]].channels
        assert all(abs(v * c - round(v * c)) < 1e-9 for v in space.grid) and space.grid[-1] == 1.0


def test_a_whole_group_can_be_kept_when_its_channels_are_not_a_multiple_of_the_rounding(cifar_root, tmp_path):
    """18 channels on a grid of 8: keep ratio 1 keeps 18 (it rounded to 16 before)."""
    from pathlib import Path

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 18, 3, padding=1), nn.BatchNorm2d(18), nn.ReLU(),
                          nn.Conv2d(18, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    env = gym.make("ChannelPrune-v0", model=model, flops_budget=1.0, data_root=Path(cifar_root), **SMALL_ENV_KWARGS)
    _, info = play(env, lambda t: 1.0, dry_run=True)
    assert info["keep_counts"] == [18, 24] and info["keep_ratios"] == [1.0, 1.0]
    from pf_agents import search

    result = search("ChannelPrune-v0", agent="uniform", episodes=1, logdir=tmp_path, progress=False,
                    env_kwargs={"model": model, "flops_budget": 1.0, **SMALL_ENV_KWARGS})
    assert result.best["info"]["keep_counts"] == [18, 24]
