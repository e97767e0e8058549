"""The error floor of a ChannelPrune surrogate: how rough is the real reward as a function of the
policy? (docs/surrogate.md, "The error floor")

The reward of ``ChannelPrune-ResNet20-v0`` at ``ft_iters=0`` is deterministic given the policy
(fixed reward images, fixed BatchNorm batches, no fine-tuning), but not smooth: a channel more
or less changes which channels LASSO keeps, the least-squares reconstruction and which of the
fixed images flip. This script measures that roughness three ways:

1. from the dataset: exact repeats (must agree: determinism) and pairs one channel-rounding
   step apart in one unit;
2. from the real env: base policies of the dataset (the best one whose every unit can move a
   step either way, near each ``--costs``) and all their one-step neighbours (``2 x units``
   episodes a base), with the per-image correctness kept: the second differences
   ``a(+1) + a(-1) - 2 a(0)`` of units whose first differences are small (little curvature)
   estimate the noise ``sigma = rms / sqrt(6)``; steps that keep more channels yet score less
   are the noise made visible; the fraction of images two neighbours disagree on gives the
   image-sampling part of a difference (``sqrt(d / n)``) and the binomial standard error;
3. (``--gp``) the fitted white-noise level of the default GP surrogate on the whole dataset.

    python benchmarks/surrogate_floor.py --data /work/episodes/channelprune_resnet20.jsonl \\
        --raw /tmp/floor_raw.jsonl --costs 0.53 0.33 --gp \\
        --out benchmarks/results/surrogate_floor_channelprune_resnet20.json

``--raw`` keeps one line per real episode (resumable: episodes already there are not played
again); about 6 s of CPU an episode, 50 episodes for two bases. ``--analyse-only`` skips the
real env (the raw file must hold the episodes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: First differences (points) above which a unit's second difference is taken as curvature, not noise.
CURVED_POINTS = 2.0


def unit_steps(env) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each unit's channels, smallest and largest count in channel-rounding steps."""
    channels = np.array([env.table.groups[g].channels for g in env.step_groups])
    r = env.channel_round
    lo = np.array([env.min_counts[g] for g in env.step_groups]) // r
    return channels, lo, channels // r


def choose_bases(data, channels: np.ndarray, kmin: np.ndarray, kmax: np.ndarray, r: int, costs: list[float],
                 width: float = 0.04) -> list[int]:
    """The most accurate episode near each cost whose every unit can move one step either way."""
    k = np.round(data.values * channels / r).astype(int)
    interior = np.flatnonzero(((k > kmin) & (k < kmax)).all(1))
    bases = []
    for c in costs:
        near = interior[np.abs(data.cost_ratio[interior] - c) < width]
        if not len(near):
            raise SystemExit(f"no episode near cost {c} has every unit inside its range: choose other --costs")
        bases.append(int(near[np.argmax(data.accuracy[near])]))
    return bases


def play(data, bases: list[int], raw: Path, threads: int) -> None:
    """Play every base and one-step neighbour on the real env, appending to ``raw``."""
    import gymnasium as gym
    import torch

    import pf_envs  # noqa: F401

    torch.set_num_threads(threads)
    kwargs = {k: data.header["env_settings"][k] for k in data.header["env_kwargs"]}
    env = gym.make(data.header["env_id"], flops_budget=float(np.max(data.budget)), **kwargs).unwrapped
    channels, kmin, kmax = unit_steps(env)
    r = env.channel_round
    done = {(d["base"], d["unit"], d["step"]) for d in read_raw(raw)}
    todo = []
    for b in bases:
        k = np.round(data.values[b] * channels / r).astype(int)
        todo.append((b, -1, 0, k))
        for u in range(len(k)):
            for s in (-1, 1):
                kk = k.copy()
                kk[u] += s
                todo.append((b, u, s, kk))
    from tqdm import tqdm

    for b, u, s, kk in tqdm([t for t in todo if t[:3] not in done], desc="real episodes"):
        c0 = time.process_time()
        _, info = env.play_policy((kk * r / channels).tolist())
        model = env.compressed_model().eval()
        correct = []
        with torch.no_grad():
            for x, y in env.reward_data.batches(250):
                correct.append((model(x.to(env.device)).argmax(1).cpu() == y.cpu()).numpy())
        bits = np.concatenate(correct)
        rec = {"base": b, "unit": u, "step": s, "k": kk.tolist(), "accuracy": info["accuracy"],
               "own_acc": float(bits.mean()), "cost_ratio": info["flops_ratio"],
               "correct": np.packbits(bits).tobytes().hex(), "cpu_s": time.process_time() - c0}
        with open(raw, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def read_raw(raw: Path) -> list[dict]:
    return [json.loads(line) for line in open(raw)] if raw.exists() else []


def from_dataset(data, channels: np.ndarray, r: int) -> dict:
    """Exact repeats and one-step pairs among the dataset's episodes."""
    k = np.round(data.values * channels / r).astype(int)
    iu = np.triu_indices(len(data), 1)
    steps = np.abs(k[:, None, :] - k[None, :, :]).sum(2)[iu]
    dacc = 100 * np.abs(data.accuracy[:, None] - data.accuracy[None, :])[iu]
    full = np.abs(k[:, None, :] - k[None, :, :]).sum(2).astype(float)
    np.fill_diagonal(full, np.inf)
    nearest = full.min(1)
    out = {"episodes": len(data), "nearest_other_steps": {"median": float(np.median(nearest)),
                                                           "quartiles": np.quantile(nearest, [0.25, 0.75]).tolist()}}
    for name, mask in (("repeats", steps == 0), ("one_step_pairs", steps == 1), ("two_step_pairs", steps == 2)):
        out[name] = {"pairs": int(mask.sum()), "mean_abs_diff_points": float(dacc[mask].mean()) if mask.any() else None,
                     "max_abs_diff_points": float(dacc[mask].max()) if mask.any() else None}
    return out


def _bits(row: dict, n_images: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(row["correct"]), np.uint8))[:n_images].astype(bool)


def independent_part(a: np.ndarray, b: np.ndarray) -> dict:
    """How much of two models' accuracy difference is image sampling: the standard deviation of
    the mean of ``correct_a - correct_b`` over the images, and per model if the two parts are
    independent and equal (``/ sqrt(2)``), in points."""
    diff = a.astype(float) - b.astype(float)
    sd = float(100 * diff.std() / np.sqrt(len(diff)))
    return {"disagreement": float((a != b).mean()), "accuracies": [float(a.mean()), float(b.mean())],
            "sd_of_difference_points": sd, "per_model_points": sd / np.sqrt(2)}


def analyse(rows: list[dict], data, n_images: int) -> dict:
    """First and second differences, noise estimates and disagreement per base; and the
    image-sampling part of two distant policies' difference (two-step pairs, the bases)."""
    out: dict = {}
    for b in sorted({d["base"] for d in rows}):
        at = {(d["unit"], d["step"]): d for d in rows if d["base"] == b}
        base = at[(-1, 0)]
        bits0 = np.unpackbits(np.frombuffer(bytes.fromhex(base["correct"]), np.uint8))[:n_images].astype(bool)
        units, second, calm, disagree, worse = [], [], [], [], 0
        for u in sorted({u for u, _ in at if u >= 0}):
            if (u, -1) not in at or (u, 1) not in at:
                continue
            down = 100 * (base["accuracy"] - at[(u, -1)]["accuracy"])  # what the last step down cost
            up = 100 * (at[(u, 1)]["accuracy"] - base["accuracy"])  # what a step up gains
            sec = up - down
            worse += (up < 0) + (down < 0)
            d = [float((np.unpackbits(np.frombuffer(bytes.fromhex(at[(u, s)]["correct"]), np.uint8))[:n_images]
                        .astype(bool) != bits0).mean()) for s in (-1, 1)]
            disagree += d
            units.append({"unit": u, "step_down_gain": round(down, 3), "step_up_gain": round(up, 3),
                          "second_difference": round(sec, 3), "disagree": [round(x, 4) for x in d]})
            second.append(sec)
            if max(abs(down), abs(up)) < CURVED_POINTS:
                calm.append(sec)
        a = base["accuracy"]
        calm_rms = float(np.sqrt(np.mean(np.square(calm)))) if calm else float("nan")
        out[str(b)] = {
            "k": base["k"], "accuracy": a, "recorded_accuracy": float(data.accuracy[b]),
            "cost_ratio": base["cost_ratio"], "units": units,
            "sigma_points_all_units": float(np.sqrt(np.mean(np.square(second)) / 6)),
            "calm_units": len(calm), "sigma_points_calm_units": calm_rms / np.sqrt(6),
            "steps_up_that_lose": int(worse), "steps": 2 * len(units),
            "mean_disagreement": float(np.mean(disagree)),
            "sampling_sd_of_a_difference_points": float(100 * np.sqrt(np.mean(disagree) / n_images)),
            "binomial_se_points": float(100 * np.sqrt(a * (1 - a) / n_images)),
        }
        moved = [d for d in rows if d["base"] == b and d["unit"] >= 0]
        two = [independent_part(_bits(p, n_images), _bits(q, n_images))["per_model_points"]
               for i, p in enumerate(moved) for q in moved[i + 1:] if p["unit"] != q["unit"]]
        out[str(b)]["two_step_pairs_per_model_points"] = float(np.mean(two)) if two else float("nan")
    bases = [d for d in rows if d["unit"] == -1]
    out["between_bases"] = [
        {"bases": [p["base"], q["base"]], **independent_part(_bits(p, n_images), _bits(q, n_images))}
        for i, p in enumerate(bases) for q in bases[i + 1:]]
    return out


def gp_noise(data) -> dict:
    """The default surrogate's fitted white-noise level on the whole dataset, in points."""
    from pf_envs.envs.surrogate import DEFAULT_FAMILY
    from pf_envs.surrogate_model import fit_on, target_of

    c0 = time.process_time()
    model = fit_on(data, DEFAULT_FAMILY, 0)
    noise = model.noise_std  # type: ignore[attr-defined]
    a = target_of(data)
    points = 100 * noise * np.mean(a * (1 - a)) if model.settings["target"] == "logit" else 100 * noise
    return {"family": DEFAULT_FAMILY, "noise_std_target_units": noise, "noise_std_points_at_mean": float(points),
            "kernel": str(model.model.kernel_), "fit_cpu_s": time.process_time() - c0}  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the ChannelPrune episode dataset (.jsonl / .npz)")
    p.add_argument("--raw", required=True, help="per-episode results of the real env (JSON lines; resumable)")
    p.add_argument("--costs", type=float, nargs="+", default=[0.53, 0.33], help="cost ratios of the base policies")
    p.add_argument("--analyse-only", action="store_true", help="no real episodes: analyse --raw as it is")
    p.add_argument("--gp", action="store_true", help="also fit the default GP on the data and report its noise")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from pf_envs.episode_data import load_episodes

    data = load_episodes(args.data)
    raw = Path(args.raw)
    # the unit geometry from the surrogate env's core (no data, no images)
    from pf_envs.envs.surrogate import SurrogateChannelPruneEnv

    geometry = SurrogateChannelPruneEnv(data.subset(np.arange(min(len(data), 5))), surrogate="gp",
                                        flops_budget=float(data.budget[0]))
    channels, kmin, kmax = unit_steps(geometry)
    bases = choose_bases(data, channels, kmin, kmax, geometry.channel_round, args.costs)
    if not args.analyse_only:
        play(data, bases, raw, args.threads)
    n_images = int(data.header["env_settings"]["reward_samples"])
    result = {"data": str(args.data), "sha256": data.sha256, "command": " ".join(sys.argv),
              "dataset": from_dataset(data, channels, geometry.channel_round),
              "bases": analyse([d for d in read_raw(raw) if d["base"] in bases], data, n_images)}
    if args.gp:
        result["gp"] = gp_noise(data)
    print(json.dumps({k: v for k, v in result.items() if k != "bases"}, indent=1))
    for pair in result["bases"]["between_bases"]:
        print(f"bases {pair['bases']}: disagree on {100 * pair['disagreement']:.1f}% of images; image sampling "
              f"makes {pair['sd_of_difference_points']:.2f} points sd of their difference, "
              f"{pair['per_model_points']:.2f} per model")
    for b, r in result["bases"].items():
        if b == "between_bases":
            continue
        print(f"base {b} (cost {r['cost_ratio']:.3f}, accuracy {100 * r['accuracy']:.2f}, recorded "
              f"{100 * r['recorded_accuracy']:.2f}): sigma {r['sigma_points_calm_units']:.2f} points from "
              f"{r['calm_units']} calm units ({r['sigma_points_all_units']:.2f} from all), "
              f"{r['steps_up_that_lose']} of {r['steps']} steps up lose accuracy, neighbours disagree on "
              f"{100 * r['mean_disagreement']:.1f}% of images (sampling sd of a difference "
              f"{r['sampling_sd_of_a_difference_points']:.2f}, binomial se "
              f"{r['binomial_se_points']:.2f} points; two steps apart: {r['two_step_pairs_per_model_points']:.2f} "
              "points per model)")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
