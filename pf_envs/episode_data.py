"""Episode datasets as arrays: what a surrogate env is fitted on.

A dataset is collected by ``scripts/collect_episodes.py`` (:mod:`pf_agents.episodes`) as JSON
lines: a header (env id, its kwargs with defaults, fingerprints, the collection plan and
command), then one record per scored episode (``values``: the applied per-unit values in unit
order; ``reward``, ``accuracy``, ``cost_ratio``, ``params_ratio``, ``budget``, ``source``,
``block``, ``seed``, ``wall_s``). :func:`export_npz` packs it into a compressed ``.npz`` (the
format shipped in the package); :func:`load_episodes` reads any of ``.jsonl``, ``.jsonl.gz``
and ``.npz`` into an :class:`EpisodeData`.

Shipped datasets are listed in :data:`DATASETS` with their sha256: a file that does not match
is refused; one that is not in the package is fetched from its ``url`` (a release artifact)
into the cache folder and verified before use.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Where the shipped datasets live.
DATA_DIR = Path(__file__).parent / "surrogate_data"

#: Shipped datasets: name -> file (in :data:`DATA_DIR`), its sha256 and a release URL (None:
#: only in the package). ``collect``: the command that rebuilds it (then ``export_npz``).
#: ``family``: the surrogate envs' default regressor on it (the best by held-out error on it:
#: ``benchmarks/surrogate_quality.py``, docs/surrogate.md).
DATASETS: dict[str, dict[str, Any]] = {
    # Both complete at 3,000 episodes: ChannelPrune-ResNet20 (2026-12-05, 00:03 UTC),
    # UniformQuant-ResNet20 (2026-12-05, 05:19 UTC).
    "channelprune_resnet20": {
        "file": "channelprune_resnet20.npz", "episodes": 3000,
        "sha256": "fe78525c2049794635163554796614f9ceb40f08a5a6db67bbdb72f3c91c86f3", "url": None,
        "family": "gp_warped",
        "collect": "python scripts/collect_episodes.py --env ChannelPrune-ResNet20-v0 --out "
                   "channelprune_resnet20.jsonl --episodes 3000 --env-kwargs ft_iters=0,reward_samples=2000 "
                   "--threads 1 (then --export pf_envs/surrogate_data/channelprune_resnet20.npz; docs/surrogate.md)",
    },
    "uniformquant_resnet20": {
        "file": "uniformquant_resnet20.npz", "episodes": 3000,
        "sha256": "f70e223e930ac0f3f7b55897ee92fca25b36056346a760478b6b143046e6a8a6", "url": None,
        "family": "hgb",
        "collect": "python scripts/collect_episodes.py --env UniformQuant-ResNet20-v0 --out "
                   "uniformquant_resnet20.jsonl --episodes 3000 --env-kwargs ft_iters=0,reward_samples=2000 "
                   "--budgets 2.1 2.4 --threads 1 (then --export pf_envs/surrogate_data/uniformquant_resnet20.npz; "
                   "docs/surrogate.md)",
    },
}

#: The record fields stored as arrays (besides ``values``).
NUMERIC_FIELDS: tuple[str, ...] = ("reward", "accuracy", "cost_ratio", "params_ratio", "budget", "wall_s")


class DamagedDatasetError(ValueError):
    """An episode dataset that cannot be read (no header, or a damaged line before the last)."""


def read_jsonl(path: str | os.PathLike[str]) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """``(header, records, good_bytes)`` of a JSON-lines dataset (``.jsonl`` or ``.jsonl.gz``):
    a damaged last line (a collection killed mid-write) is skipped; ``good_bytes`` is the length
    of the readable prefix (where a resumed collection appends).

    Raises:
        DamagedDatasetError: a damaged line before the last, or a first line that is not a header.
    """
    path = Path(path)
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    header: dict[str, Any] | None = None
    records: list[dict[str, Any]] = []
    good = 0
    lines = raw.split(b"\n")
    complete = lines[:-1]  # the text after the last newline is an unfinished line (or empty)
    for i, line in enumerate(complete):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == len(complete) - 1 and not lines[-1]:
                break  # a damaged last line: dropped
            raise DamagedDatasetError(f"{path}: line {i + 1} is damaged ({line[:60]!r}); only the last line "
                                      "may be, when a collection was killed mid-write") from None
        if i == 0:
            if "header" not in obj:
                raise DamagedDatasetError(f"{path}: the first line is not a header: not an episode dataset")
            header = obj["header"]
        else:
            records.append(obj)
        good += len(line) + 1
    return header, records, good


@dataclass
class EpisodeData:
    """An episode dataset as arrays (one row per episode).

    Attributes:
        header: the collection's header (``env_id``, ``env_settings``, ``budget_kwarg``,
            fingerprints, ``accuracy_original``, ``plan``, ``command``, ...).
        values: ``(n, units)`` applied per-unit values, unit order.
        reward / accuracy / cost_ratio / params_ratio / budget / wall_s: ``(n,)`` floats (NaN
            where a record had none).
        source: ``(n,)`` policy source of each episode (``random``, ``jitter``, an agent name).
        block / seed: ``(n,)`` the plan's block and the episode's reset seed.
    """

    header: dict[str, Any]
    values: np.ndarray
    reward: np.ndarray
    accuracy: np.ndarray
    cost_ratio: np.ndarray
    params_ratio: np.ndarray
    budget: np.ndarray
    wall_s: np.ndarray
    source: np.ndarray
    block: np.ndarray
    seed: np.ndarray
    sha256: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def num_units(self) -> int:
        return int(self.values.shape[1])

    def subset(self, index: np.ndarray) -> EpisodeData:
        """The episodes at ``index`` (an index array or a boolean mask)."""
        arrays = {k: getattr(self, k)[index] for k in ("values", "source", "block", "seed", *NUMERIC_FIELDS)}
        rows = np.arange(len(self))[index].astype(np.int64)
        sha = hashlib.sha256(self.sha256.encode() + rows.tobytes()).hexdigest()  # a subset is other data
        return EpisodeData(self.header, sha256=sha, extra=dict(self.extra), **arrays)

    @classmethod
    def from_records(cls, header: dict[str, Any], records: list[dict[str, Any]], sha256: str | None = None
                     ) -> EpisodeData:
        """The arrays of ``records``; ``sha256`` names the data (default: a hash of the header and
        records, so that equal data share a fitted surrogate and different data never do)."""
        if sha256 is None:
            blob = json.dumps([header, records], sort_keys=True, default=str).encode()
            sha256 = hashlib.sha256(blob).hexdigest()
        if not records:
            raise DamagedDatasetError("the dataset holds no episodes yet")
        units = {len(r["values"]) for r in records}
        if len(units) != 1:
            raise DamagedDatasetError(f"episodes of different lengths {sorted(units)}: not one env's dataset")

        def col(key: str) -> np.ndarray:
            return np.asarray([np.nan if r.get(key) is None else float(r[key]) for r in records], np.float64)

        return cls(
            header=header, values=np.asarray([r["values"] for r in records], np.float64),
            source=np.asarray([str(r.get("source", "")) for r in records]),
            block=np.asarray([int(r.get("block", -1)) for r in records], np.int64),
            seed=np.asarray([int(r.get("seed") or 0) for r in records], np.int64),
            sha256=sha256, **{k: col(k) for k in NUMERIC_FIELDS},
        )


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_npz(data: EpisodeData, path: str | os.PathLike[str]) -> str:
    """Write ``data`` as a compressed ``.npz`` (values as float32; the header as JSON); returns
    the file's sha256 (what :data:`DATASETS` records)."""
    arrays: dict[str, Any] = {
        "header": np.asarray(json.dumps(data.header, sort_keys=True)),
        "values": data.values.astype(np.float32), "source": data.source.astype("U16"),
        "block": data.block.astype(np.int32), "seed": data.seed.astype(np.int64),
    }
    arrays.update({k: getattr(data, k).astype(np.float32) for k in NUMERIC_FIELDS})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, path)
    return file_sha256(path)


def _load_npz(path: Path, sha: str) -> EpisodeData:
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["header"]))
        return EpisodeData(
            header=header, values=z["values"].astype(np.float64), source=z["source"].astype(str),
            block=z["block"].astype(np.int64), seed=z["seed"].astype(np.int64), sha256=sha,
            **{k: z[k].astype(np.float64) for k in NUMERIC_FIELDS},
        )


def dataset_path(name: str) -> Path:
    """The verified file of the shipped dataset ``name`` (fetched from its release URL into the
    cache folder when it is not in the package).

    Raises:
        ValueError: unknown name, or a file whose sha256 is not the recorded one.
        FileNotFoundError: not in the package and no URL to fetch it from.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown episode dataset {name!r}; shipped: {sorted(DATASETS)} (or pass a file path)")
    entry = DATASETS[name]
    path = DATA_DIR / entry["file"]
    if not path.is_file():
        from pf_envs.data import cache_dir

        path = Path(cache_dir()) / "surrogate_data" / entry["file"]
        if not path.is_file():
            if not entry.get("url"):
                raise FileNotFoundError(f"episode dataset {name!r} ({entry['file']}) is not in the package and "
                                        f"has no release URL; rebuild it with: {entry.get('collect', '?')}")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".part")
            urllib.request.urlretrieve(entry["url"], tmp)  # noqa: S310 - a fixed https URL from the table
            got = file_sha256(tmp)
            if got != entry["sha256"]:
                tmp.unlink(missing_ok=True)
                raise ValueError(f"downloaded {entry['url']} has sha256 {got}, expected {entry['sha256']}: "
                                 "refused (a damaged or replaced file)")
            os.replace(tmp, path)
    got = file_sha256(path)
    if got != entry["sha256"]:
        raise ValueError(f"{path} has sha256 {got}, expected {entry['sha256']}: refused (a damaged or replaced "
                         "file); delete it to fetch it again or reinstall the package")
    return path


def load_episodes(source: str | os.PathLike[str]) -> EpisodeData:
    """An episode dataset from a shipped name (:data:`DATASETS`) or a file (``.npz``,
    ``.jsonl``, ``.jsonl.gz``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: unknown name, a sha256 mismatch, or a damaged / empty dataset
            (:class:`DamagedDatasetError`).
    """
    path = dataset_path(str(source)) if str(source) in DATASETS else Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"no episode dataset at {path}; shipped names: {sorted(DATASETS)}")
    sha = file_sha256(path)
    if path.suffix == ".npz":
        return _load_npz(path, sha)
    header, records, _ = read_jsonl(path)
    if header is None:
        raise DamagedDatasetError(f"{path} has no header line: not an episode dataset (or empty)")
    return EpisodeData.from_records(header, records, sha)


__all__ = ["DATASETS", "DamagedDatasetError", "EpisodeData", "dataset_path", "export_npz", "load_episodes",
           "read_jsonl"]
