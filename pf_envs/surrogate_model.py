"""Regressors from a policy (applied per-unit values) to the accuracy a real episode scores: the
reward model of the surrogate envs (:mod:`pf_envs.envs.surrogate`).

Families (:data:`FAMILIES`), each an ensemble of ``members`` fitted on bootstrap samples, so the
spread of the members' predictions is an uncertainty (reported in the surrogate env's ``info``
as ``surrogate_std``):

- ``hgb``: scikit-learn's ``HistGradientBoostingRegressor``;
- ``gb``: scikit-learn's ``GradientBoostingRegressor`` (row subsampling);
- ``mlp``: scikit-learn's ``MLPRegressor`` (two hidden layers), predicted in numpy;
- ``gp``: scikit-learn's ``GaussianProcessRegressor`` (Matern 5/2 with one length scale per
  feature, plus white noise); one model, its posterior standard deviation is the uncertainty;
- ``gp_warped``: the same GP on warped keep ratios and cost ratio (Box-Cox, exponent -0.5),
  fitting the logit of accuracy, hyperparameters searched on a subset (the surrogate envs'
  default).

Features: each unit's value scaled to [0, 1] by its range in the training data, and the
policy's cost ratio (``warp``: both through a Box-Cox transform first). Target: accuracy, or
its logit (``target``); the surrogate env computes its reward from the predicted accuracy with
the env's reward function, as the real env does.

:func:`holdout_scores` measures a family on held-out episodes (Spearman, mean absolute error in
points, Spearman within the top decile and within cost-ratio bins).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pf_envs.episode_data import EpisodeData

#: Every regressor family, name -> class (below).
FAMILIES: dict[str, type[SurrogateRegressor]] = {}


class SurrogateRegressor:
    """An ensemble regressor: :meth:`fit` on ``(x, y)``, :meth:`predict` gives (mean, std).

    Every family also takes the settings of :data:`COMMON_DEFAULTS`: ``warp`` (None: each
    unit's value as it is, and the cost ratio as it is; a number ``lam``: each value and the
    cost ratio through the Box-Cox transform ``(v ** lam - 1) / lam``, ``0`` being ``log v``,
    so that the steep end of low keep ratios is spread out) and ``target`` (``accuracy``, or
    ``logit``: the regressor fits ``log(a / (1 - a))`` and its prediction is mapped back, its
    standard deviation by the derivative ``a (1 - a)``)."""

    name: ClassVar[str] = ""
    DEFAULTS: ClassVar[dict[str, Any]] = {}
    #: Settings every family takes (a family's ``DEFAULTS`` may override them).
    COMMON_DEFAULTS: ClassVar[dict[str, Any]] = {"warp": None, "target": "accuracy"}
    TARGETS: ClassVar[tuple[str, ...]] = ("accuracy", "logit")

    def __init__(self, seed: int = 0, **settings: Any) -> None:
        valid = {**self.COMMON_DEFAULTS, **self.DEFAULTS}
        unknown = sorted(set(settings) - set(valid))
        if unknown:
            raise TypeError(f"surrogate {self.name!r} got unknown setting(s) {unknown}; valid: {sorted(valid)}")
        self.seed = int(seed)
        self.settings = {**valid, **settings}
        if self.settings["target"] not in self.TARGETS:
            raise ValueError(f"surrogate target {self.settings['target']!r} is not one of {self.TARGETS}")
        if self.settings["warp"] is not None and not isinstance(self.settings["warp"], (int, float)):
            raise ValueError(f"surrogate warp {self.settings['warp']!r} must be None or a Box-Cox exponent (0: log)")
        self.lo: np.ndarray | None = None
        self.span: np.ndarray | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            FAMILIES[cls.name] = cls

    # features and target -----------------------------------------------------------------------
    def raw_features(self, values: np.ndarray, cost_ratio: np.ndarray) -> np.ndarray:
        """``(n, units + 1)`` before scaling: the values then the cost ratio, warped (``warp``)."""
        v = np.atleast_2d(np.asarray(values, np.float64))
        x = np.concatenate([v, np.asarray(cost_ratio, np.float64).reshape(-1, 1)], 1)
        lam = self.settings["warp"]
        if lam is None:
            return x
        x = np.maximum(x, 1e-6)
        return np.log(x) if lam == 0 else (x ** float(lam) - 1.0) / float(lam)

    def features(self, values: np.ndarray, cost_ratio: np.ndarray) -> np.ndarray:
        """``(n, units + 1)``: :meth:`raw_features` scaled by their training ranges (the cost
        ratio unscaled when it is not warped)."""
        assert self.lo is not None and self.span is not None
        return (self.raw_features(values, cost_ratio) - self.lo) / self.span

    def to_target(self, accuracy: np.ndarray) -> np.ndarray:
        """What the regressor fits for ``accuracy`` (``target``)."""
        a = np.asarray(accuracy, np.float64)
        if self.settings["target"] == "logit":
            a = np.clip(a, 1e-3, 1 - 1e-3)
            return np.log(a / (1 - a))
        return a

    def from_target(self, mean: np.ndarray, std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy and its standard deviation from the regressor's prediction of the target."""
        if self.settings["target"] == "logit":
            p = 1.0 / (1.0 + np.exp(-mean))
            return p, std * p * (1 - p)
        return mean, std

    def fit(self, values: np.ndarray, cost_ratio: np.ndarray, accuracy: np.ndarray) -> SurrogateRegressor:
        raw = self.raw_features(values, cost_ratio)
        self.lo = raw.min(0)
        hi = raw.max(0)
        self.span = np.where(hi > self.lo, hi - self.lo, 1.0)
        if self.settings["warp"] is None:  # the cost ratio as it is (a ratio in [0, 1] already)
            self.lo[-1], self.span[-1] = 0.0, 1.0
        self._fit(self.features(values, cost_ratio), self.to_target(accuracy))
        return self

    def predict(self, values: np.ndarray, cost_ratio: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Predicted accuracy and its uncertainty (standard deviation) per policy."""
        x = self.features(values, np.atleast_1d(cost_ratio))
        return self.from_target(*self._predict(x))

    def _bootstrap(self, n: int, k: int) -> np.ndarray:
        return np.random.default_rng([self.seed, k]).integers(0, n, n)

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class _TreeEnsemble(SurrogateRegressor):
    def _member(self, k: int) -> Any:
        raise NotImplementedError

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        self.members = []
        for k in range(int(self.settings["members"])):
            idx = self._bootstrap(len(y), k) if self.settings["members"] > 1 else np.arange(len(y))
            self.members.append(self._member(k).fit(x[idx], y[idx]))

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = np.stack([m.predict(x) for m in self.members])
        return p.mean(0), p.std(0)


class HGBSurrogate(_TreeEnsemble):
    """Bagged ``HistGradientBoostingRegressor``; ``monotone``: the prediction may only grow with
    each unit's value (keeping more never costs accuracy) and with the cost ratio."""

    name = "hgb"
    DEFAULTS: ClassVar[dict[str, Any]] = {"members": 5, "max_iter": 300, "learning_rate": 0.05,
                                          "max_leaf_nodes": 15, "min_samples_leaf": 5, "l2_regularization": 0.0,
                                          "monotone": False}

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        self._n_features = x.shape[1]
        super()._fit(x, y)
        self._pack()

    def _pack(self) -> None:
        """Every member's trees as padded ``(trees, nodes)`` arrays, so one prediction walks all
        of them at once in numpy (scikit-learn's ``predict`` costs ~3 ms a call in input checks
        and thread set-up, 5 members 15 ms: over the surrogate envs' 5 ms an episode)."""
        trees = [(k, t[0].nodes) for k, m in enumerate(self.members) for t in m._predictors]
        width = max(len(nodes) for _, nodes in trees)
        padded = np.zeros((len(trees), width), trees[0][1].dtype)
        padded["is_leaf"] = 1  # padding is never reached; a leaf there ends any walk
        for t, (_, nodes) in enumerate(trees):
            if nodes["is_categorical"].any():  # pragma: no cover - our features are numeric
                raise ValueError("categorical splits are not supported by the packed trees")
            padded[t, :len(nodes)] = nodes
        flat = padded.ravel()  # node j of tree t at t * width + j
        self._feat, self._thr = flat["feature_idx"].astype(np.intp), flat["num_threshold"].astype(np.float64)
        self._left, self._right = flat["left"].astype(np.intp), flat["right"].astype(np.intp)
        self._leaf, self._value = flat["is_leaf"].astype(bool), flat["value"].astype(np.float64)
        self._base = (np.arange(len(trees)) * width)[:, None]
        self._depth = int(padded["depth"].max())
        members = np.asarray([k for k, _ in trees])
        self._starts = np.flatnonzero(np.r_[True, members[1:] != members[:-1]])
        self._baseline = np.asarray([float(np.ravel(m._baseline_prediction)[0]) for m in self.members])

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The members' predictions (as their ``predict``, to rounding), walking the packed trees."""
        x = np.asarray(x, np.float64)
        node = np.zeros((len(self._base), len(x)), np.intp)  # (trees, rows): node index within its tree
        cols = np.arange(len(x))[None, :]
        for _ in range(self._depth):
            at = self._base + node
            inner = ~self._leaf[at]
            if not inner.any():
                break
            # NaN goes right here (scikit-learn learns a side for it); the features are never NaN
            go_left = x[cols, self._feat[at]] <= self._thr[at]
            node = np.where(inner, np.where(go_left, self._left[at], self._right[at]), node)
        p = np.add.reduceat(self._value[self._base + node], self._starts, axis=0) + self._baseline[:, None]
        return p.mean(0), p.std(0)

    def _member(self, k: int) -> Any:
        from sklearn.ensemble import HistGradientBoostingRegressor

        s = self.settings
        return HistGradientBoostingRegressor(
            max_iter=s["max_iter"], learning_rate=s["learning_rate"], max_leaf_nodes=s["max_leaf_nodes"],
            min_samples_leaf=s["min_samples_leaf"], l2_regularization=s["l2_regularization"],
            monotonic_cst=[1] * self._n_features if s["monotone"] else None,
            early_stopping=False, random_state=self.seed * 1000 + k)


class GBSurrogate(_TreeEnsemble):
    """Bagged ``GradientBoostingRegressor`` (each member also subsamples rows)."""

    name = "gb"
    DEFAULTS: ClassVar[dict[str, Any]] = {"members": 5, "n_estimators": 300, "learning_rate": 0.05, "max_depth": 3,
                                          "subsample": 0.8}

    def _member(self, k: int) -> Any:
        from sklearn.ensemble import GradientBoostingRegressor

        s = self.settings
        return GradientBoostingRegressor(n_estimators=s["n_estimators"], learning_rate=s["learning_rate"],
                                         max_depth=s["max_depth"], subsample=s["subsample"],
                                         random_state=self.seed * 1000 + k)


class MLPSurrogate(SurrogateRegressor):
    """An ensemble of ``MLPRegressor`` (ReLU, Adam, L2), each on a bootstrap sample; predicted
    with numpy from the fitted weights (fast on one row)."""

    name = "mlp"
    DEFAULTS: ClassVar[dict[str, Any]] = {"members": 5, "hidden": (64, 64), "alpha": 1e-3, "max_iter": 3000,
                                          "learning_rate_init": 1e-3}

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPRegressor

        s = self.settings
        self.y_mean, self.y_std = float(y.mean()), float(y.std() or 1.0)
        z = (y - self.y_mean) / self.y_std
        self.weights: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
        for k in range(int(s["members"])):
            idx = self._bootstrap(len(y), k) if s["members"] > 1 else np.arange(len(y))
            m = MLPRegressor(hidden_layer_sizes=tuple(s["hidden"]), alpha=s["alpha"], max_iter=s["max_iter"],
                             learning_rate_init=s["learning_rate_init"], random_state=self.seed * 1000 + k,
                             early_stopping=len(y) >= 200, n_iter_no_change=50, tol=1e-6)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                m.fit(x[idx], z[idx])
            self.weights.append(([w.copy() for w in m.coefs_], [b.copy() for b in m.intercepts_]))

    def state(self) -> dict[str, Any]:
        """The fitted ensemble as tensors and numbers (what the disk cache stores)."""
        import torch

        assert self.lo is not None and self.span is not None
        return {"lo": torch.from_numpy(self.lo), "span": torch.from_numpy(self.span), "y_mean": self.y_mean,
                "y_std": self.y_std, "coefs": [[torch.from_numpy(w) for w in c] for c, _ in self.weights],
                "biases": [[torch.from_numpy(b) for b in bs] for _, bs in self.weights]}

    def load_state(self, state: dict[str, Any], data: EpisodeData | None = None) -> MLPSurrogate:
        """The ensemble of :meth:`state` (``data`` is not needed: the weights are the model)."""
        self.lo, self.span = state["lo"].numpy(), state["span"].numpy()
        self.y_mean, self.y_std = float(state["y_mean"]), float(state["y_std"])
        self.weights = [([w.numpy() for w in c], [b.numpy() for b in bs])
                        for c, bs in zip(state["coefs"], state["biases"])]
        return self

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for coefs, biases in self.weights:
            h = x
            for i, (w, b) in enumerate(zip(coefs, biases)):
                h = h @ w + b
                if i < len(coefs) - 1:
                    h = np.maximum(h, 0.0)
            out.append(h[:, 0] * self.y_std + self.y_mean)
        p = np.stack(out)
        return p.mean(0), p.std(0)


class GPSurrogate(SurrogateRegressor):
    """``GaussianProcessRegressor``: constant x Matern(5/2, ARD) + white noise, targets
    normalised; at most ``max_points`` training episodes (a random subset), its cost being cubic.

    ``hyper_points``: the kernel's hyperparameters are fitted (marginal likelihood, L-BFGS,
    ``restarts`` extra random starts) on a random subset of at most that many episodes, then the
    GP is conditioned on all (at most ``max_points``) with them fixed: one evaluation of the
    likelihood costs about 1 s of CPU at 1,000 episodes and 8 s at 2,400, a search ~100 of them,
    while conditioning is one Cholesky factorisation (0.7 s at 2,400). None: on all of them."""

    name = "gp"
    DEFAULTS: ClassVar[dict[str, Any]] = {"max_points": 1500, "restarts": 1, "hyper_points": None}
    #: Kernel hyperparameters (log) to fit with instead of optimising them (a cached fit).
    fixed_theta: np.ndarray | None = None

    def state(self) -> dict[str, Any]:
        """The fitted kernel's hyperparameters (what the disk cache stores; the data is the rest)."""
        import torch

        return {"theta": torch.from_numpy(np.asarray(self.model.kernel_.theta, np.float64))}

    def load_state(self, state: dict[str, Any], data: EpisodeData | None = None) -> GPSurrogate:
        """Refit on ``data`` with the cached hyperparameters (one Cholesky factorisation, no search)."""
        if data is None:
            raise ValueError("a GP surrogate is its data: load_state needs the dataset it was fitted on")
        self.fixed_theta = state["theta"].numpy()
        return self.fit(data.values, data.cost_ratio, target_of(data))  # type: ignore[return-value]

    @property
    def noise_std(self) -> float:
        """The fitted white-noise standard deviation, in the target's units (what the kernel
        leaves unexplained: the data's roughness plus the misfit at its length scales)."""
        k = self.model.kernel_
        return float(np.sqrt(k.k2.noise_level) * np.ravel(self.model._y_train_std)[0])

    def _fit(self, x: np.ndarray, y: np.ndarray) -> None:
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        n = int(self.settings["max_points"])
        rng = np.random.default_rng(self.seed)
        if len(y) > n:
            idx = rng.choice(len(y), n, replace=False)
            x, y = x[idx], y[idx]
        kernel = ConstantKernel(1.0) * Matern(length_scale=np.ones(x.shape[1]), length_scale_bounds=(1e-2, 1e3),
                                              nu=2.5) + WhiteKernel(1e-2, (1e-6, 1.0))
        theta = self.fixed_theta
        h = self.settings["hyper_points"]
        with warnings.catch_warnings():  # hyperparameters at their bounds: reported as warnings, harmless here
            warnings.simplefilter("ignore", ConvergenceWarning)
            if theta is None and h is not None and len(y) > int(h):
                sub = rng.choice(len(y), int(h), replace=False)
                search = GaussianProcessRegressor(kernel=kernel, normalize_y=True,
                                                  n_restarts_optimizer=int(self.settings["restarts"]),
                                                  random_state=self.seed).fit(x[sub], y[sub])
                theta = search.kernel_.theta
            if theta is not None:
                kernel = kernel.clone_with_theta(theta)
            self.model = GaussianProcessRegressor(kernel=kernel, normalize_y=True,
                                                  n_restarts_optimizer=int(self.settings["restarts"]),
                                                  optimizer=None if theta is not None else "fmin_l_bfgs_b",
                                                  random_state=self.seed)
            self.model.fit(x, y)

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std = self.model.predict(x, return_std=True)
        return mean, std


class WarpedGPSurrogate(GPSurrogate):
    """:class:`GPSurrogate` on warped keep ratios and cost ratio (Box-Cox ``warp=-0.5``:
    ``2 (1 - v ** -0.5)``, between ``log v`` and ``1 - 1 / v``), fitting the logit of accuracy
    (``target="logit"``): the accuracy falls steeply as a group's keep ratio nears its minimum
    and flattens near 1, which a stationary kernel on the raw values must fit with one length
    scale for both (docs/surrogate.md, "Surrogates and their fidelity").
    Hyperparameters on at most ``hyper_points`` episodes (90 s of CPU), conditioned on up to
    ``max_points`` (2,400: 3.6 ms of CPU an episode of the surrogate env; the posterior
    standard deviation costs ``O(max_points ** 2)`` a prediction)."""

    name = "gp_warped"
    DEFAULTS: ClassVar[dict[str, Any]] = {"max_points": 2400, "restarts": 1, "hyper_points": 1000, "warp": -0.5,
                                          "target": "logit"}


def make_regressor(family: str, seed: int = 0, **settings: Any) -> SurrogateRegressor:
    """A new regressor of ``family`` (see :data:`FAMILIES`)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown surrogate family {family!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[family](seed=seed, **settings)


def fit_on(data: EpisodeData, family: str, seed: int = 0, **settings: Any) -> SurrogateRegressor:
    """A regressor of ``family`` fitted on every episode of ``data`` (target: accuracy)."""
    target = target_of(data)
    return make_regressor(family, seed, **settings).fit(data.values, data.cost_ratio, target)


def target_of(data: EpisodeData) -> np.ndarray:
    """The regression target of every episode: its accuracy (the reward where none was recorded)."""
    acc = data.accuracy
    return np.where(np.isfinite(acc), acc, data.reward)


# -- held-out error -------------------------------------------------------------------------------
def top_decile(y: np.ndarray) -> np.ndarray:
    """The mask of the episodes whose label is in the top tenth (ties at the cut included): the
    one rule behind every "top decile" figure (held-out scores, noise ceiling, re-scores)."""
    y = np.asarray(y)
    return y >= np.quantile(y, 0.9)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def split_indices(data: EpisodeData, test_frac: float = 0.2, seed: int = 0, by: str = "episode"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices: a random ``test_frac`` of the episodes (``by="episode"``) or of
    the plan's blocks (``by="block"``: a search's episodes are all in or all out, stricter)."""
    rng = np.random.default_rng(seed)
    n = len(data)
    if by == "episode":
        perm = rng.permutation(n)
        k = max(1, int(round(test_frac * n)))
        return np.sort(perm[k:]), np.sort(perm[:k])
    if by == "block":
        blocks = np.unique(data.block)
        test_blocks = rng.choice(blocks, max(1, int(round(test_frac * len(blocks)))), replace=False)
        mask = np.isin(data.block, test_blocks)
        return np.flatnonzero(~mask), np.flatnonzero(mask)
    raise ValueError(f"by must be 'episode' or 'block', got {by!r}")


@dataclass
class HoldoutScore:
    """A family's error on held-out episodes (accuracy in points: x 100)."""

    family: str
    train: int
    test: int
    spearman: float
    mae_points: float
    top_decile_spearman: float
    within_budget_spearman: float
    mean_std_points: float
    fit_s: float
    predict_ms: float
    top_decile: int = 0
    top_decile_ci: tuple[float, float] = (float("nan"), float("nan"))
    median_ae_points: float = float("nan")
    #: A GP family's fitted white noise, in points at the test part's mean accuracy (NaN for
    #: the others), and the Spearman a regressor that knew the noise-free accuracy would reach
    #: against labels with that noise, overall and in the top decile (:func:`noise_ceiling`).
    noise_points: float = float("nan")
    ceiling_spearman: float = float("nan")
    ceiling_top_decile: float = float("nan")

    def row(self) -> str:
        lo, hi = self.top_decile_ci
        return (f"| {self.family} | {self.train} | {self.test} | {self.spearman:.3f} | {self.mae_points:.2f} | "
                f"{self.median_ae_points:.2f} | {self.top_decile_spearman:.3f} [{lo:.2f}, {hi:.2f}] "
                f"({self.top_decile}) | "
                f"{self.within_budget_spearman:.3f} | {self.mean_std_points:.2f} | {self.fit_s:.1f} | "
                f"{self.predict_ms:.2f} |")


HEADER = ("| surrogate | train | test | Spearman | MAE (points) | median AE | top-decile Spearman [95% CI] (n) | "
          "within-budget Spearman | mean std (points) | fit s | predict ms (1 row) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def bootstrap_spearman_ci(a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0
                          ) -> tuple[float, float]:
    """A percentile bootstrap 95% interval of the Spearman correlation of paired ``a``, ``b``
    (resamples whose ranks are all tied are left out)."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    n = len(a)
    if n < 3:
        return float("nan"), float("nan")
    idx = rng.integers(0, n, (resamples, n))
    ra, rb = np.apply_along_axis(rankdata, 1, a[idx]), np.apply_along_axis(rankdata, 1, b[idx])
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    ok = den > 0
    r = (ra * rb).sum(1)[ok] / den[ok]
    return float(np.quantile(r, 0.025)), float(np.quantile(r, 0.975))


def noise_ceiling(y: np.ndarray, sigma: float, sims: int = 400, seed: int = 0) -> tuple[float, float]:
    """The Spearman correlations, overall and within the top decile, that a regressor knowing
    the noise-free accuracy exactly would reach against labels carrying Gaussian noise of
    standard deviation ``sigma`` (same units as ``y``): what the labels' own noise leaves
    reachable. Simulated: the noise-free values are ``y`` shrunk towards their mean to the
    variance ``var(y) - sigma ** 2``, the labels those plus fresh noise, the top decile chosen
    on the labels as :func:`holdout_scores` chooses it; the mean over ``sims`` draws."""
    y = np.asarray(y, np.float64)
    k = np.sqrt(max(0.0, 1.0 - sigma**2 / max(float(y.var()), 1e-300)))
    f = y.mean() + (y - y.mean()) * k
    rng = np.random.default_rng(seed)
    overall, top = [], []
    for _ in range(sims):
        label = f + rng.normal(0.0, sigma, len(f))
        sel = top_decile(label)
        overall.append(spearman(label, f))
        top.append(spearman(label[sel], f[sel]))
    return float(np.nanmean(overall)), float(np.nanmean(top))


def holdout_scores(data: EpisodeData, families: Sequence[str] = ("hgb", "gb", "mlp", "gp"), *, test_frac: float = 0.2,
                   seed: int = 0, by: str = "episode", bin_width: float = 0.1,
                   settings: dict[str, dict[str, Any]] | None = None, train_frac: float = 1.0) -> list[HoldoutScore]:
    """Fit each family on the training part of ``data`` and score it on the held-out part.

    ``top_decile_spearman``: Spearman among the held-out episodes whose real accuracy is in the
    top tenth; ``within_budget_spearman``: the mean Spearman within cost-ratio bins of
    ``bin_width`` holding at least 10 held-out episodes (what a search at one budget sees).
    ``families`` may hold labelled variants ``label=family`` whose settings are
    ``settings[label]`` (e.g. ``hgb_mono=hgb`` with ``{"hgb_mono": {"monotone": True}}``).
    ``train_frac`` < 1: fit on a random fraction of the training part only (the same test part:
    a learning curve).
    """
    tr, te = split_indices(data, test_frac, seed, by)
    if not 0 < train_frac <= 1:
        raise ValueError(f"train_frac must be in (0, 1], got {train_frac}")
    if train_frac < 1:
        tr = np.sort(np.random.default_rng([seed, 1]).choice(tr, max(2, int(round(train_frac * len(tr)))),
                                                             replace=False))
    train, test = data.subset(tr), data.subset(te)
    y = target_of(test)
    out = []
    for entry in families:
        family, _, base = entry.partition("=")
        t0 = time.perf_counter()
        model = fit_on(train, base or family, seed, **(settings or {}).get(family, {}))
        fit_s = time.perf_counter() - t0
        mean, std = model.predict(test.values, test.cost_ratio)
        t0 = time.perf_counter()
        reps = 20
        for i in range(reps):
            model.predict(test.values[i % len(test): i % len(test) + 1], test.cost_ratio[i % len(test)])
        predict_ms = 1000 * (time.perf_counter() - t0) / reps
        top = top_decile(y)
        bins = np.floor(test.cost_ratio / bin_width)
        within = [spearman(y[bins == b], mean[bins == b]) for b in np.unique(bins) if (bins == b).sum() >= 10]
        within = [w for w in within if np.isfinite(w)]
        ceiling = (float("nan"), float("nan"))
        noise_points = float("nan")
        if hasattr(model, "noise_std"):  # the GPs: their fitted white noise, in points at the test mean
            a = float(np.mean(y))
            noise_points = 100 * model.noise_std * (a * (1 - a) if model.settings["target"] == "logit" else 1.0)
            ceiling = noise_ceiling(y, noise_points / 100, seed=seed)
        out.append(HoldoutScore(
            family, len(tr), len(te), spearman(y, mean), float(100 * np.abs(y - mean).mean()),
            spearman(y[top], mean[top]), float(np.mean(within)) if within else float("nan"),
            float(100 * std.mean()), fit_s, predict_ms, top_decile=int(top.sum()),
            top_decile_ci=bootstrap_spearman_ci(y[top], mean[top], seed=seed),
            median_ae_points=float(100 * np.median(np.abs(y - mean))), noise_points=float(noise_points),
            ceiling_spearman=ceiling[0], ceiling_top_decile=ceiling[1]))
    return out


__all__ = ["FAMILIES", "HEADER", "HoldoutScore", "SurrogateRegressor", "bootstrap_spearman_ci", "fit_on",
           "holdout_scores", "make_regressor", "noise_ceiling", "split_indices", "top_decile"]
