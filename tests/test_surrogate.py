"""Surrogate envs and their regressors, on a tiny synthetic ChannelPrune-ResNet20 dataset (no
images, no training); one test compares the geometry with the real env (needs the data)."""

from __future__ import annotations

import numpy as np
import pytest

import pf_envs  # noqa: F401  (registers the ids)
from pf_agents.episodes import env_settings
from pf_envs.envs.surrogate import SurrogateChannelPruneEnv, fitted_regressor
from pf_envs.episode_data import DATASETS, EpisodeData, export_npz, load_episodes
from pf_envs.surrogate_model import FAMILIES, bootstrap_spearman_ci, holdout_scores, make_regressor

REAL_ID = "ChannelPrune-ResNet20-v0"
SURROGATE_ID = "Surrogate-ChannelPrune-ResNet20-v0"


def synthetic_accuracy(values: np.ndarray) -> np.ndarray:
    """A smooth stand-in for the real accuracy: early groups matter less than late ones."""
    w = np.linspace(0.1, 0.6, values.shape[1])
    return 0.9 - ((1.0 - values) ** 2 * w).sum(1) / w.sum()


def synthetic_dataset(n: int = 120, seed: int = 0) -> EpisodeData:
    """``n`` episodes of random actions at budgets 0.2-0.8 on the surrogate env's own geometry
    (dry runs: the clamp and the grids are the real env's), scored by :func:`synthetic_accuracy`."""
    settings = {k: v for k, v in env_settings(REAL_ID, {"ft_iters": 0, "reward_samples": 2000}).items()
                if k != "flops_budget"}
    header = {"format": "pf-episodes/1", "env_id": REAL_ID, "env_kwargs": {"ft_iters": 0}, "env_settings": settings,
              "budget_kwarg": "flops_budget", "reference_budget": 0.5, "model_fingerprint": "synthetic",
              "recovery_fingerprint": "synthetic", "num_steps": 12, "accuracy_original": 0.9}
    seedling = [{"values": [1.0] * 12, "accuracy": 0.9, "reward": 0.9, "cost_ratio": 1.0, "budget": b, "source": "x",
                 "block": 0, "seed": i} for i, b in enumerate((0.2, 0.8))]
    geometry = SurrogateChannelPruneEnv(EpisodeData.from_records(header, seedling), surrogate="gp")
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        budget = round(float(rng.uniform(0.2, 0.8)), 4)
        geometry.budget = budget  # the clamp reads the budget
        geometry.reset(seed=i, options={"dry_run": True})
        for a in rng.uniform(-1, 1, 12):
            *_, info = geometry.step(np.array([a], np.float32))
        values = np.asarray(info["policy"])
        acc = float(synthetic_accuracy(values[None])[0] + rng.normal(0, 0.002))
        records.append({"values": values.tolist(), "accuracy": acc, "reward": acc, "cost_ratio": info["cost_ratio"],
                        "budget": budget, "source": "random", "block": i // 5, "seed": i})
    return EpisodeData.from_records(header, records)


@pytest.fixture(scope="module")
def data() -> EpisodeData:
    return synthetic_dataset()


@pytest.fixture(scope="module")
def env(data):
    return SurrogateChannelPruneEnv(data, flops_budget=0.3, surrogate="gp")


def test_registered():
    import gymnasium as gym

    assert SURROGATE_ID in pf_envs.ENV_IDS and SURROGATE_ID in gym.registry
    assert pf_envs.ENV_IDS[SURROGATE_ID]["kwargs"]["data"] == "channelprune_resnet20"
    assert SURROGATE_ID not in pf_envs.env_ids("ChannelPrune")  # not a method x model id


def test_env_checkers(env):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)


def test_episode_reward_info_and_budget(env, data):
    env.reset(seed=0)
    for _ in range(env.num_steps):
        obs, reward, terminated, truncated, info = env.step(np.array([1.0], np.float32))
    assert terminated and not truncated and env.observation_space.contains(obs)
    assert info["flops_ratio"] <= 0.3 + 1e-9 and info["cost_ratio"] == info["flops_ratio"]
    assert 0.0 <= info["accuracy"] <= 1.0 and reward == pytest.approx(info["accuracy"])
    assert info["surrogate_std"] >= 0 and info["surrogate"] == "gp" and info["accuracy_original"] == 0.9
    for key in ("policy", "keep_ratios", "keep_counts", "flops_budget", "params_ratio", "macs", "reward_components",
                "reward_samples", "budget", "cost_name"):
        assert key in info, key
    assert 0 < info["params_ratio"] < 1
    # the prediction is the regressor's, and near the synthetic truth on a dense policy region
    mean, _ = env.regressor.predict(np.asarray(info["policy"])[None], info["cost_ratio"])
    assert info["accuracy"] == pytest.approx(float(np.clip(mean[0], 0, 1)))


def test_deterministic_and_fitted_once(data):
    a = SurrogateChannelPruneEnv(data, flops_budget=0.5)
    b = SurrogateChannelPruneEnv(data, flops_budget=0.6)
    assert a.regressor is b.regressor is fitted_regressor(data, "gp_warped", 0)  # the default family
    ra, _ = a.play_policy(b.play_policy([0.5] * 12, dry_run=True)[1]["policy"])
    assert ra == a.play_policy([0.5] * 12)[0]


def test_budget_outside_the_data_and_unknown_kwargs(data):
    with pytest.raises(ValueError, match="outside the budgets"):
        SurrogateChannelPruneEnv(data, flops_budget=0.95)
    with pytest.raises(TypeError, match="ft_iters"):
        SurrogateChannelPruneEnv(data, ft_iters=100)
    with pytest.raises(ValueError, match="unknown surrogate"):
        SurrogateChannelPruneEnv(data, surrogate="forest")
    with pytest.raises(RuntimeError, match="builds no model"):
        SurrogateChannelPruneEnv(data).compressed_model()


def test_budgets_the_plan_drew_from_are_covered(data):
    """A budget inside the range the collection's plan drew budgets from is accepted, though no
    block drew exactly the range's end; one outside is not."""
    lo = float(np.min(data.budget))
    with pytest.raises(ValueError, match="outside the budgets"):
        SurrogateChannelPruneEnv(data, flops_budget=lo - 0.01)
    planned = EpisodeData.from_records({**data.header, "plan": {"budgets": [lo - 0.02, 0.8]}}, [
        {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in zip(
            ("values", "accuracy", "reward", "cost_ratio", "budget", "source", "block", "seed"),
            (data.values[i], data.accuracy[i], data.reward[i], data.cost_ratio[i], data.budget[i],
             str(data.source[i]), int(data.block[i]), int(data.seed[i])))} for i in range(len(data))])
    assert SurrogateChannelPruneEnv(planned, flops_budget=lo - 0.01, surrogate="gp").budget == pytest.approx(lo - 0.01)


def test_reward_function_applies_to_the_prediction(data):
    env = SurrogateChannelPruneEnv(data, flops_budget=0.5, reward="acc_log_flops")
    reward, info = env.play_policy([0.5] * 12)
    assert reward != pytest.approx(info["accuracy"]) and info["reward_name"] == "acc_log_flops"


def test_gym_make_with_a_file(tmp_path, data):
    import gymnasium as gym

    path = tmp_path / "episodes.npz"
    export_npz(data, path)
    env = gym.make(SURROGATE_ID, data=str(path), flops_budget=0.4, surrogate="gp")
    env.reset(seed=1)
    while True:
        *_, terminated, _, info = env.step(env.action_space.sample())
        if terminated:
            break
    assert info["flops_ratio"] <= 0.4 + 1e-9 and "surrogate_std" in info


def test_shipped_dataset_sha256_is_checked(tmp_path, monkeypatch, data):
    import pf_envs.episode_data as ed

    path = tmp_path / "d.npz"
    sha = export_npz(data, path)
    monkeypatch.setattr(ed, "DATA_DIR", tmp_path)
    monkeypatch.setitem(DATASETS, "tiny", {"file": "d.npz", "sha256": sha, "url": None})
    assert len(load_episodes("tiny")) == len(data)
    monkeypatch.setitem(DATASETS, "tiny", {"file": "d.npz", "sha256": "0" * 64, "url": None})
    with pytest.raises(ValueError, match="sha256"):
        load_episodes("tiny")
    monkeypatch.setitem(DATASETS, "gone", {"file": "none.npz", "sha256": sha, "url": None, "collect": "cmd"})
    with pytest.raises(FileNotFoundError, match="cmd"):
        load_episodes("gone")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_regressor_families_fit_and_rank(family, data):
    small = {"hgb": {"members": 2, "max_iter": 50}, "gb": {"members": 2, "n_estimators": 50},
             "mlp": {"members": 2}}.get(family, {})
    tr, te = np.arange(0, 90), np.arange(90, len(data))
    model = make_regressor(family, 0, **small).fit(data.values[tr], data.cost_ratio[tr], data.accuracy[tr])
    mean, std = model.predict(data.values[te], data.cost_ratio[te])
    assert mean.shape == std.shape == (len(te),) and (std >= 0).all()
    from scipy.stats import spearmanr

    assert spearmanr(mean, data.accuracy[te]).statistic > 0.6  # a smooth target: every family ranks it


def test_hgb_packed_trees_predict_as_scikit_learn(data):
    """hgb walks its members' trees in numpy: the same predictions as each member's predict."""
    from pf_envs.surrogate_model import HGBSurrogate

    model = make_regressor("hgb", 0, members=3, max_iter=40).fit(data.values, data.cost_ratio, data.accuracy)
    assert isinstance(model, HGBSurrogate)
    x = model.features(data.values, data.cost_ratio)
    x[:5] += 0.5  # beyond the training range too
    members = np.stack([m.predict(x) for m in model.members])
    mean, std = model._predict(x)
    np.testing.assert_allclose(mean, members.mean(0), atol=1e-12)
    np.testing.assert_allclose(std, members.std(0), atol=1e-12)
    one, _ = model._predict(x[7:8])
    assert one[0] == pytest.approx(mean[7], abs=1e-12)


def test_holdout_scores(data):
    (score,) = holdout_scores(data, ["gp"], test_frac=0.25)
    assert score.train + score.test == len(data) and score.spearman > 0.8 and score.mae_points < 3
    lo, hi = score.top_decile_ci
    assert score.top_decile >= 3 and -1 <= lo <= score.top_decile_spearman <= hi <= 1
    assert score.median_ae_points <= 2 * score.mae_points and "|" in score.row()
    (half,) = holdout_scores(data, ["gp"], test_frac=0.25, train_frac=0.5)  # a learning curve's point
    assert half.test == score.test and half.train == round(score.train / 2)
    with pytest.raises(ValueError, match="train_frac"):
        holdout_scores(data, ["gp"], train_frac=0)


def test_noise_ceiling():
    """No noise: a perfect regressor ranks perfectly; noise as large as the spread: the top
    decile is near chance, the overall ranking about Corr = 1 / sqrt(2)."""
    from pf_envs.surrogate_model import noise_ceiling

    y = np.random.default_rng(0).normal(0.8, 0.01, 600)
    assert noise_ceiling(y, 0.0, sims=20) == pytest.approx((1.0, 1.0))
    overall, top = noise_ceiling(y, 0.01 / np.sqrt(2), sims=50)  # half the variance is noise
    assert 0.65 < overall < 0.75 and top < 0.45
    assert noise_ceiling(y, 0.002, sims=50)[1] > top


def test_holdout_scores_report_a_gp_s_noise_and_ceiling(data):
    (gp, hgb) = holdout_scores(data, ["gp", "hgb"], test_frac=0.25)
    assert gp.noise_points >= 0 and 0 < gp.ceiling_spearman <= 1 and gp.ceiling_top_decile <= 1
    assert hgb.noise_points != hgb.noise_points  # NaN: trees fit no noise level


def test_bootstrap_spearman_ci():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    lo, hi = bootstrap_spearman_ci(a, a + 0.3 * rng.normal(size=200))
    assert 0.85 < lo < hi < 1.0
    lo, hi = bootstrap_spearman_ci(a[:10], rng.normal(size=10))  # ten unrelated pairs: a wide interval
    assert lo < 0 < hi and hi - lo > 0.8


def test_warp_and_logit_target(data):
    """warp: Box-Cox of the values and the cost ratio before scaling (0: log); target=logit: the
    regressor fits the logit, predictions come back as accuracies with the derivative's std."""
    v, c, y = data.values, data.cost_ratio, data.accuracy
    plain = make_regressor("gp", 0).fit(v, c, y)
    assert plain.features(v, c)[:, -1] == pytest.approx(c)  # unwarped: the cost ratio as it is
    logged = make_regressor("gp", 0, warp=0.0, target="logit").fit(v, c, y)
    x = logged.features(v, c)
    assert x.min() == pytest.approx(0) and x.max() == pytest.approx(1)
    np.testing.assert_allclose(x[:, -1], (np.log(c) - np.log(c).min()) / np.ptp(np.log(c)))
    z = logged.to_target(y)
    assert z == pytest.approx(np.log(y / (1 - y)))
    p, s = logged.from_target(z, np.ones_like(z))
    assert p == pytest.approx(y) and s == pytest.approx(y * (1 - y))
    warped = make_regressor("gp", 0, warp=-0.5)
    assert warped.raw_features(np.full((1, 12), 0.25), [0.25])[0] == pytest.approx(-2.0)  # 2 (1 - 0.25 ** -0.5)
    mean, std = logged.predict(v[:5], c[:5])
    assert ((0 < mean) & (mean < 1)).all() and (std > 0).all() and np.abs(mean - y[:5]).max() < 0.02
    with pytest.raises(ValueError, match="target"):
        make_regressor("gp", 0, target="probit")
    with pytest.raises(ValueError, match="warp"):
        make_regressor("gp", 0, warp="log")
    with pytest.raises(TypeError, match="unknown setting"):
        make_regressor("gp", 0, kernel="rbf")


def test_gp_hyperparameters_on_a_subset(data):
    """hyper_points: the kernel is searched on a subset, the GP conditioned on every episode;
    the cached hyperparameters refit to the same predictions (what the env's disk cache does)."""
    from pf_envs.surrogate_model import GPSurrogate

    v, c, y = data.values, data.cost_ratio, data.accuracy
    model = make_regressor("gp_warped", 0, hyper_points=40).fit(v, c, y)
    assert model.model.X_train_.shape[0] == len(data) and model.model.optimizer is None
    again = GPSurrogate(0, **model.settings).fit(v, c, y)
    np.testing.assert_allclose(again.predict(v, c)[0], model.predict(v, c)[0])  # the subset is a function of the seed
    cached = type(model)(0, hyper_points=40)
    cached.fixed_theta = model.state()["theta"].numpy()
    cached.fit(v, c, y)
    np.testing.assert_allclose(cached.predict(v, c)[0], model.predict(v, c)[0])
    assert 0 < model.noise_std < 0.5  # in logit units: the synthetic noise is small


def test_disk_cache_key_has_the_settings(data, monkeypatch, tmp_path):
    """The on-disk fit is keyed by every resolved setting: another warp is another fit."""
    import pf_envs.envs.surrogate as sg
    from pf_envs.surrogate_model import WarpedGPSurrogate

    monkeypatch.setenv("PF_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(sg, "_FITTED", {})
    first = fitted_regressor(data, "gp_warped", 0)
    monkeypatch.setattr(sg, "_FITTED", {})
    monkeypatch.setitem(WarpedGPSurrogate.DEFAULTS, "warp", 0.0)
    second = fitted_regressor(data, "gp_warped", 0)
    assert first.settings["warp"] == -0.5 and second.settings["warp"] == 0.0
    assert len(list((tmp_path / "surrogates").glob("surrogate-gp_warped-*"))) == 2
    assert not np.allclose(first.features(data.values[:3], data.cost_ratio[:3]),
                           second.features(data.values[:3], data.cost_ratio[:3]))


def test_default_family_is_the_warped_gp(env, data):
    from pf_envs.envs.surrogate import DEFAULT_FAMILY

    assert DEFAULT_FAMILY == "gp_warped"
    default = SurrogateChannelPruneEnv(data, flops_budget=0.3)
    assert default.family == "gp_warped" and default.recovery_fingerprint != env.recovery_fingerprint
    _, info = default.play_policy(env.play_policy([0.5] * 12, dry_run=True)[1]["policy"])
    assert info["surrogate"] == "gp_warped" and info["surrogate_std"] > 0


def test_a_shipped_dataset_chooses_its_family(data, monkeypatch):
    """With no ``surrogate`` a shipped dataset (matched by sha256) gets its DATASETS family;
    any other dataset the default."""
    import pf_envs.envs.surrogate as sur
    from pf_envs.envs.surrogate import DEFAULT_FAMILY, default_family

    assert default_family(data) == DEFAULT_FAMILY
    monkeypatch.setitem(sur.DATASETS, "mine", {"file": "x.npz", "sha256": data.sha256, "family": "hgb"})
    assert default_family(data) == "hgb"
    env = SurrogateChannelPruneEnv(data, flops_budget=0.3, surrogate_seed=1)
    assert env.family == "hgb" and SurrogateChannelPruneEnv(data, flops_budget=0.3, surrogate="gp").family == "gp"
    assert {e.get("family") for e in DATASETS.values()} <= set(FAMILIES)


def _real_env_available() -> bool:
    import os

    return bool(os.environ.get("PF_DATA_DIR"))


@pytest.mark.skipif(not _real_env_available(), reason="needs the CIFAR-10 data (PF_DATA_DIR)")
def test_geometry_matches_the_real_env(env):
    """Same spaces, observations, clamp and per-step info as the real env, action for action."""
    import gymnasium as gym

    real = gym.make(REAL_ID, flops_budget=0.3, ft_iters=0, reward_samples=2000).unwrapped
    assert real.observation_space == env.observation_space and real.action_space == env.action_space
    rng = np.random.default_rng(3)
    for episode in range(3):
        actions = rng.uniform(-1, 1, env.num_steps)
        o1, _ = real.reset(seed=episode, options={"dry_run": True})
        o2, _ = env.reset(seed=episode, options={"dry_run": True})
        np.testing.assert_allclose(o1, o2)
        for a in actions:
            o1, _, _, _, i1 = real.step(np.array([a], np.float32))
            o2, _, _, _, i2 = env.step(np.array([a], np.float32))
            np.testing.assert_allclose(o1, o2)
            assert i1 == i2


def quant_dataset(n: int = 40, seed: int = 0) -> EpisodeData:
    """``n`` random UniformQuant-ResNet20 policies at 2.1-2.4 average bits, scored smoothly."""
    from pf_envs.envs.surrogate import SurrogateUniformQuantEnv

    real = "UniformQuant-ResNet20-v0"
    settings = {k: v for k, v in env_settings(real, {"reward_samples": 2000}).items() if k != "avg_bits"}
    header = {"format": "pf-episodes/1", "env_id": real, "env_kwargs": {}, "env_settings": settings,
              "budget_kwarg": "avg_bits", "reference_budget": 2.25, "model_fingerprint": "synthetic",
              "recovery_fingerprint": "synthetic", "num_steps": 22, "accuracy_original": 0.89}
    seedling = [{"values": [2.0] * 22, "accuracy": 0.8, "cost_ratio": 2 / 32, "budget": b, "source": "x", "block": 0,
                 "seed": 0} for b in (2.1, 2.4)]
    geometry = SurrogateUniformQuantEnv(EpisodeData.from_records(header, seedling), surrogate="gp")
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        budget = round(float(rng.uniform(2.1, 2.4)), 4)
        geometry.budget = budget / 32  # the clamp reads the budget (a fraction of 32-bit weights)
        geometry.reset(seed=i, options={"dry_run": True})
        for a in rng.uniform(-1, 1, 22):
            *_, info = geometry.step(np.array([a], np.float32))
        acc = 0.89 - 0.02 * float(np.mean((8 - np.asarray(info["policy"])) ** 2)) / 36
        records.append({"values": info["policy"], "accuracy": acc, "reward": acc, "cost_ratio": info["cost_ratio"],
                        "budget": budget, "source": "random", "block": i, "seed": i})
    return EpisodeData.from_records(header, records)


def test_uniform_quant_surrogate():
    """Checkers pass; the budget clamp holds; model_size_bytes is the learners' storage of the
    quantized model, without building it."""
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from learners.quantization import quantize_model, storage_bytes
    from pf_envs.envs.surrogate import SurrogateUniformQuantEnv

    env = SurrogateUniformQuantEnv(quant_dataset(), avg_bits=2.25, surrogate="gp")
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=True)
    rng = np.random.default_rng(1)
    env.reset(seed=0)
    for a in rng.uniform(-1, 1, env.num_steps):
        *_, info = env.step(np.array([a], np.float32))
    assert info["avg_weight_bits"] <= 2.25 + 1e-9 and info["flops_ratio"] == info["params_ratio"] == 1.0
    built = quantize_model(env.model, env.layer_specs(info["policy"]), act_ranges=env._act_ranges, codebooks=None)
    assert info["model_size_bytes"] == storage_bytes(built)
    with pytest.raises(ValueError, match="outside the budgets"):
        SurrogateUniformQuantEnv(quant_dataset(), avg_bits=3.0)


def test_shipped_dataset_and_registered_id():
    """The packaged dataset matches its sha256 and the registered id plays on it."""
    import gymnasium as gym

    data = load_episodes("channelprune_resnet20")
    assert len(data) == DATASETS["channelprune_resnet20"]["episodes"] and data.num_units == 12
    assert data.header["env_id"] == REAL_ID and data.header["env_settings"]["ft_iters"] == 0
    env = gym.make(SURROGATE_ID, flops_budget=0.3, surrogate="hgb")  # trees: seconds to fit on the whole snapshot
    env.reset(seed=0)
    while True:
        *_, terminated, _, info = env.step(env.action_space.sample())
        if terminated:
            break
    assert info["flops_ratio"] <= 0.3 + 1e-9 and 0 <= info["accuracy"] <= 1


def test_shipped_quant_dataset_and_registered_id():
    """The packaged UniformQuant-ResNet20 snapshot matches its sha256 and its registered id plays
    an episode within its avg_bits budget (weights only, the dataset's bit range)."""
    import gymnasium as gym

    import pf_envs

    data = load_episodes("uniformquant_resnet20")
    assert len(data) == DATASETS["uniformquant_resnet20"]["episodes"] and data.num_units == 22
    assert data.header["env_id"] == "UniformQuant-ResNet20-v0" and data.header["env_settings"]["ft_iters"] == 0
    assert pf_envs.ENV_IDS["Surrogate-UniformQuant-ResNet20-v0"]["kwargs"]["data"] == "uniformquant_resnet20"
    env = gym.make("Surrogate-UniformQuant-ResNet20-v0", avg_bits=2.25, surrogate="hgb")
    env.reset(seed=0)
    while True:
        *_, terminated, _, info = env.step(env.action_space.sample())
        if terminated:
            break
    assert info["avg_weight_bits"] <= 2.25 + 1e-9 and 0 <= info["accuracy"] <= 1 and "surrogate_std" in info


def test_surrogate_class_follows_the_dataset_s_method(data):
    import dataclasses

    from pf_envs.envs.surrogate import SurrogateUniformQuantEnv, surrogate_class

    assert surrogate_class(data) is SurrogateChannelPruneEnv
    assert surrogate_class(quant_dataset()) is SurrogateUniformQuantEnv
    with pytest.raises(ValueError, match="no surrogate env"):
        surrogate_class(dataclasses.replace(data, header={**data.header, "env_id": "Toy-v0"}))
