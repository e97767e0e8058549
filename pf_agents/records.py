"""The run folder: config, one JSON line per episode, the best episode so far.

``<logdir>/<run>/``
    ``.lock``           held (``flock``) by the one process writing the run; holds its pid
    ``config.json``     what was asked for (env id and kwargs, agent and kwargs, seed, episodes)
                        and the fingerprints of the base model's weights (``base_model``) and of
                        the env's recovery recipe (``recovery``)
    ``episodes.jsonl``  one line per finished episode, appended and fsynced as it ends
    ``best.json``       the best episode so far (replaced atomically)
    ``events.out.tfevents.*``  TensorBoard curves (x-axis: episode)

Guarantees (docs/search.md, "Guarantees"):

- one writer: :meth:`RunRecord.open` takes an exclusive, non-blocking lock on ``.lock``
  before it reads or writes anything in the folder, and keeps it until :meth:`RunRecord.close`
  (the OS releases it when the process dies); a second process gets :class:`RunLockedError`;
- at most the episode in flight is lost: each episode's line is written and flushed to the OS
  as the episode ends, so a killed process can only cut the LAST line, which the resuming
  writer drops (``read_run`` skips it and writes nothing); damage anywhere else is
  :class:`DamagedRunError`, naming the file and line, and nothing is rewritten. The line is
  also fsynced (kept through a power cut or an OS crash) when it ends a run or when
  :data:`SYNC_INTERVAL_S` has passed since the last fsync: every episode of a real env (1-90 s),
  about once a second on a surrogate env (a millisecond an episode), where an fsync per
  episode cost more than the episode;
- nothing read here runs code: JSON only.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from learners.atomic import atomic_write_text, remove_stale_temporaries

CONFIG = "config.json"
EPISODES = "episodes.jsonl"
BEST = "best.json"
LOCK = ".lock"

#: at most this many seconds between two fsyncs of ``episodes.jsonl`` (and ``best.json``)
SYNC_INTERVAL_S = 1.0

#: keys every episode line must hold (written by :class:`pf_agents.base.EpisodeRecorder`)
REQUIRED_KEYS = ("episode", "reward", "raw_actions", "applied")

_NEW_RUN_HINT = "start a new run with --run-name or another --logdir (search(run_name=...))"


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock (it is writing that run)."""


class DamagedRunError(ValueError):
    """A run folder's file is damaged in a way a kill cannot explain (names file and line)."""


class RunWriteError(OSError):
    """Writing into the run folder failed (disk full, read-only, no permission)."""

    def __str__(self) -> str:  # the sentence alone, without OSError's "[Errno N]" prefix
        return str(self.strerror)


def to_jsonable(value: Any) -> Any:
    """Numbers, strings, lists and dicts as JSON can hold them (NaN/inf become strings)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return repr(value)


def write_error(path: Path, exc: OSError, what: str = "") -> RunWriteError:
    """A :class:`RunWriteError` that says which file could not be written, why, and what to do."""
    reason = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
            errno.EACCES: "no permission", errno.EPERM: "no permission",
            errno.EFBIG: "the file size limit was reached"}.get(exc.errno or -1, "")
    return RunWriteError(
        exc.errno or errno.EIO,
        f"cannot write {path} ({reason}{'; ' + hint if hint else ''}){' ' + what if what else ''}: "
        "the episodes recorded so far are intact; free space or make the folder writable, then "
        "continue with --resume (resume=True)",
    )


class RunLock:
    """An exclusive lock on ``<run>/.lock`` held for the whole run; the OS releases it when the
    process dies (``flock`` on POSIX, ``msvcrt.locking`` on Windows), so a killed run never
    leaves a stale lock."""

    def __init__(self, folder: Path, busy: str | None = None) -> None:
        """``busy``: what a second process is told (``{folder}`` and ``{holder}`` are filled
        in); default: the run folder's sentence."""
        self.path = Path(folder) / LOCK
        self.busy = busy
        self._fh: IO[str] | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunLockedError` at once (never waits)."""
        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            raise write_error(self.path, exc, "(the run's lock file)") from exc
        try:
            _lock_nb(fh)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "a process that has not written its id yet"
            fh.close()
            if self.busy is not None:
                raise RunLockedError(self.busy.format(folder=self.path.parent, holder=holder)) from None
            raise RunLockedError(
                f"{self.path.parent} is being written by another process ({holder}): one run folder has "
                "one writer. Wait for it to finish (or stop it), then continue with --resume; to search "
                f"at the same time, {_NEW_RUN_HINT}"
            ) from None
        try:  # the lock file may have been removed by the process that held it (a failed start)
            same = os.fstat(fh.fileno()).st_ino == os.stat(self.path).st_ino
        except OSError:
            same = False
        if not same:
            _unlock(fh)
            fh.close()
            raise RunLockedError(
                f"{self.path.parent} was being removed by another process (a start that failed) while this "
                "one opened it; run the command again"
            )
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
            fh.flush()
        except OSError:
            pass  # the lock is held; the holder's id is only a courtesy to the next process
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            try:
                _unlock(self._fh)
            finally:
                self._fh.close()
                self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None


try:
    import fcntl

    def _lock_nb(fh: IO[str]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fh: IO[str]) -> None:
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _lock_nb(fh: IO[str]) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]

    def _unlock(fh: IO[str]) -> None:
        fh.seek(0)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]


def _check_episode(rec: Any, index: int) -> str | None:
    """What is wrong with episode line ``index`` (None if nothing)."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, found {type(rec).__name__}"
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        return f"missing {', '.join(repr(k) for k in missing)}"
    if isinstance(rec["episode"], bool) or rec["episode"] != index:
        return f"episode is {rec['episode']!r} where episode {index} belongs (lines must be episodes 0, 1, 2, ...)"
    reward = rec["reward"]
    if isinstance(reward, str) and reward in ("nan", "inf", "-inf"):
        rec["reward"] = float(reward)  # written by to_jsonable for a non-finite reward
    elif isinstance(reward, bool) or not isinstance(reward, (int, float)):
        return f"reward is {reward!r}, not a number"
    if not isinstance(rec["raw_actions"], list) or not isinstance(rec["applied"], list):
        return "raw_actions and applied must be lists"
    return None


def _env_kwargs_diff(
    old: dict[str, Any],
    new: dict[str, Any],
    fill: Callable[[str, dict[str, Any]], dict[str, Any]] | None,
) -> dict[str, tuple[Any, Any]]:
    """The env kwargs a resume would change, ``{"env_kwargs.<name>": (recorded, asked)}``,
    compared with the env's defaults filled in (by ``fill``) where the env id is the same."""
    before, after = old.get("env_kwargs"), new.get("env_kwargs")
    if not isinstance(before, dict) or not isinstance(after, dict):
        return {} if to_jsonable(before) == to_jsonable(after) else {"env_kwargs": (before, after)}
    if fill is not None and old.get("env_id") == new.get("env_id"):
        try:
            before, after = fill(str(new["env_id"]), before), fill(str(new["env_id"]), after)
        except Exception:  # noqa: BLE001 - an env whose defaults cannot be read (unregistered): compared as spelled
            pass
    missing = object()
    return {
        f"env_kwargs.{name}": (before.get(name, "(not set)"), after.get(name, "(not set)"))
        for name in sorted(set(before) | set(after))
        if to_jsonable(before.get(name, missing)) != to_jsonable(after.get(name, missing))
    }


def _remove_contents(path: Path) -> None:
    """Delete everything inside ``path`` (its lock file too: a process that opened that file
    meanwhile sees it is gone once it gets the lock, and refuses)."""
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _better(rec: dict[str, Any], best: dict[str, Any] | None) -> bool:
    reward = rec["reward"]
    if isinstance(reward, float) and math.isnan(reward):
        return best is None
    return best is None or (isinstance(best["reward"], float) and math.isnan(best["reward"])) or reward > best["reward"]


def read_episodes(ep_path: Path) -> tuple[list[dict[str, Any]], int | None, bool]:
    """Parse ``episodes.jsonl``.

    Returns ``(episodes, cut, needs_newline)``: ``cut`` is the byte offset where a
    half-written last line starts (a kill while writing it; to be dropped), else None;
    ``needs_newline`` says the last line is complete JSON but lacks its newline.

    Raises:
        DamagedRunError: a line other than the last is not a valid episode, or the last one
            is valid JSON but not a valid episode.
    """
    if not ep_path.is_file():
        return [], None, False
    data = ep_path.read_bytes()
    episodes: list[dict[str, Any]] = []
    offset = 0
    raw_lines = data.split(b"\n")
    terminated = data.endswith(b"\n")
    if terminated or not data:
        raw_lines = raw_lines[:-1]
    for number, raw in enumerate(raw_lines, 1):
        last = number == len(raw_lines)
        start, offset = offset, offset + len(raw) + 1
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if last and not terminated:  # cut short by a kill while it was written: the episode in flight
                return episodes, start, False
            raise DamagedRunError(
                f"{ep_path} line {number} is not valid JSON ({exc}); only a last line can be cut short by a "
                "kill, so the file was damaged otherwise and was left as it is. Restore it from a copy, or "
                f"remove line {number} and the lines after it to resume from the {len(episodes)} episodes "
                f"before it, or {_NEW_RUN_HINT}"
            ) from None
        problem = _check_episode(rec, len(episodes))
        if problem is not None:
            if last and not terminated:
                return episodes, start, False
            raise DamagedRunError(
                f"{ep_path} line {number} is not a valid episode record ({problem}); the file was left as it "
                f"is. Restore it from a copy, or remove line {number} and the lines after it to resume from "
                f"the {len(episodes)} episodes before it, or {_NEW_RUN_HINT}"
            )
        episodes.append(rec)
    return episodes, None, bool(data) and not terminated


@dataclass
class RunRecord:
    """Reads and writes one run folder.

    A writer opens it with :meth:`open` (which takes the folder's lock), calls :meth:`start`
    once the env is built, :meth:`append` per episode and :meth:`close` at the end (or
    :meth:`discard` when a new run fails before its first episode). :func:`read_run` reads
    a folder without locking or writing anything.
    """

    path: Path
    episodes: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    #: the config to write (a new run) or the recorded one (a resumed run)
    pending_config: dict[str, Any] = field(default_factory=dict)
    #: a new run (nothing recorded before this process)
    new: bool = True
    _lock: RunLock | None = None
    _created: bool = False
    #: when ``episodes.jsonl`` was last fsynced (``time.monotonic``), and whether lines were
    #: appended since
    _synced_at: float = -math.inf
    _unsynced: bool = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        config: dict[str, Any],
        resume: bool,
        *,
        fill_env_defaults: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
        agent_defaults: dict[str, Any] | None = None,
    ) -> RunRecord:
        """Lock ``path`` and open it for a new run, or (``resume``) for continuing the run
        recorded there. Nothing is written yet (except a half-written last line being cut
        from a resumed run's records, and the lock file).

        ``fill_env_defaults(env_id, env_kwargs)`` gives the kwargs the env is built with (its
        defaults under the given ones): a resume compares those, so ``flops_budget=0.5`` spelled
        out equals the default it names. ``agent_defaults`` (the agent's ``DEFAULTS``) fills in
        the settings a recorded run does not name (settings added to the agent after the run was
        recorded; their defaults keep the agent's earlier behaviour).

        Raises:
            RunLockedError: another process is writing this run.
            FileExistsError: the folder holds a run and ``resume`` is false.
            FileNotFoundError: ``resume`` is true but there is no run to continue.
            DamagedRunError: the config or the records are damaged (names file and line).
            ValueError: resuming with settings other than the recorded ones; the folder or
                its parent is a file.
            RunWriteError: the folder cannot be created or written.
        """
        path = Path(path)
        for parent in (path.parent, *path.parent.parents):
            if parent.exists() and not parent.is_dir():
                raise ValueError(
                    f"{parent} is a file, not a folder: --logdir (logdir=) must be a folder (it is created "
                    "if missing); pass another path"
                )
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file, not a run folder: pass another --run-name or --logdir")
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(path, exc, "(creating the run folder)") from exc
        lock = RunLock(path)
        try:
            lock.acquire()
        except BaseException:
            # never delete here: the folder (even one this process just made) may be another
            # process's run, which holds its lock; an empty folder is removed only if still empty
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        record = cls(path, _lock=lock, _created=created)
        try:
            record._open(config, resume, fill_env_defaults, agent_defaults)
        except BaseException:
            if created:  # remove what this process made while it still holds the lock
                _remove_contents(path)
            record.close()
            if created:
                with contextlib.suppress(OSError):
                    path.rmdir()
            raise
        return record

    def _open(
        self,
        config: dict[str, Any],
        resume: bool,
        fill_env_defaults: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
        agent_defaults: dict[str, Any] | None = None,
    ) -> None:
        remove_stale_temporaries(self.path, "*.json")  # config/best writes cut short by a kill
        cfg_path = self.path / CONFIG
        ep_path = self.path / EPISODES
        has_records = ep_path.is_file() and ep_path.stat().st_size > 0
        if not cfg_path.is_file():
            if has_records:
                raise FileExistsError(
                    f"{self.path} holds episode records ({EPISODES}) but no {CONFIG}: the settings they were "
                    f"recorded with are unknown, so nothing is added to them. Restore {CONFIG} and continue "
                    f"with --resume, or {_NEW_RUN_HINT}"
                )
            if resume:
                raise FileNotFoundError(f"nothing to resume: {cfg_path} does not exist")
            self.pending_config = dict(config)
            return
        if not resume:
            if has_records:
                raise FileExistsError(
                    f"{self.path} already holds a run: pass --resume (resume=True) to continue it, or "
                    "--run-name / another --logdir to start a new one (nothing was overwritten)"
                )
            # a config but no episode: a start that never finished its first episode; start afresh
            self.pending_config = dict(config)
            return
        old = self.config
        recorded_agent = old.get("agent_kwargs")
        if agent_defaults and isinstance(recorded_agent, dict) and old.get("agent") == config.get("agent"):
            old["agent_kwargs"] = {**{k: v for k, v in agent_defaults.items() if k not in recorded_agent},
                                   **recorded_agent}
        keys = ("env_id", "agent", "agent_kwargs", "seed")
        diff = {k: (old.get(k), config.get(k)) for k in keys if to_jsonable(old.get(k)) != to_jsonable(config.get(k))}
        diff.update(_env_kwargs_diff(old, config, fill_env_defaults))
        if diff:
            raise ValueError(
                f"cannot resume {self.path} with other settings: {diff} (recorded, asked); "
                "use the recorded settings or start a new run"
            )
        self._load(repair=True)
        old["episodes"] = config.get("episodes", old.get("episodes"))
        self.pending_config = old
        self.new = False

    def check_env(self, model: str | None, recovery: str | None) -> None:
        """Record the env's fingerprints in the config (``base_model``: the base model's
        weights; ``recovery``: every setting that decides the reward), or, for a resumed run,
        refuse other ones: a search resumed against a re-trained checkpoint or another recipe
        would mix two kinds of reward in one record. A run with episodes but no recorded
        recovery was made before recipes were recorded, under an older recipe, and is refused.

        Raises:
            ValueError: the run was recorded with another base model or recovery.
        """
        config = self.pending_config
        recorded = config.get("base_model")
        if model is not None and recorded is not None and recorded != model:
            raise ValueError(
                f"cannot resume {self.path}: it was recorded with base-model weights {recorded}, but the "
                f"env now loads {model} (another checkpoint). Pass the checkpoint the run used "
                "(env kwarg checkpoint=...) or start a new run (--run-name / another --logdir)"
            )
        recorded_recovery = config.get("recovery")
        if recovery is not None and recorded_recovery != recovery and (recorded_recovery is not None or self.episodes):
            what = ("another recovery recipe (an env setting or default, or the env's recovery "
                    f"version, differs: recorded {recorded_recovery}, now {recovery})"
                    if recorded_recovery is not None else "an older recovery recipe, before recipes were recorded")
            raise ValueError(
                f"cannot resume {self.path}: its rewards were scored with {what}; they are not comparable "
                "with the env's rewards now. Start a new run (--run-name / another --logdir)"
            )
        if model is not None:
            config["base_model"] = model
        if recovery is not None:
            config["recovery"] = recovery

    def start(self) -> None:
        """Write ``config.json`` (call once the env is built and :meth:`check_env` passed)."""
        path = self.path / CONFIG
        try:
            atomic_write_text(path, json.dumps(to_jsonable(self.pending_config), indent=2) + "\n")
        except OSError as exc:
            raise write_error(path, exc) from exc

    def _load(self, repair: bool = True) -> None:
        """Read the episodes; ``repair`` cuts a half-written last line from the file (only the
        process that holds the lock and will append to the run may do that)."""
        ep_path = self.path / EPISODES
        self.episodes, cut, needs_newline = read_episodes(ep_path)
        if repair and (cut is not None or needs_newline):
            try:
                if cut is not None:
                    os.truncate(ep_path, cut)
                else:
                    with open(ep_path, "a") as f:
                        f.write("\n")
            except OSError as exc:
                raise write_error(ep_path, exc, "(cutting a half-written last line)") from exc
        self.best = None
        for ep in self.episodes:
            if _better(ep, self.best):
                self.best = ep

    @property
    def config(self) -> dict[str, Any]:
        """The recorded ``config.json``.

        Raises:
            DamagedRunError: it is not a readable JSON object.
        """
        path = self.path / CONFIG
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DamagedRunError(
                f"cannot read {path} ({exc}): the run's config is damaged; restore it (it holds the settings "
                f"the records were made with), or {_NEW_RUN_HINT}"
            ) from None
        if not isinstance(config, dict):
            raise DamagedRunError(
                f"cannot read {path} (a JSON {type(config).__name__}, not an object): the run's config is "
                f"damaged; restore it, or {_NEW_RUN_HINT}"
            )
        return config

    def append(self, episode: dict[str, Any]) -> bool:
        """Append one finished episode (one write, flushed; fsynced per :data:`SYNC_INTERVAL_S`
        and at :meth:`close`); returns whether it is the new best (then ``best.json`` is
        replaced atomically).

        Raises:
            RunWriteError: the disk is full or read-only (the lines before stay intact).
        """
        line = json.dumps(to_jsonable(episode))
        path = self.path / EPISODES
        now = time.monotonic()
        sync = now - self._synced_at >= SYNC_INTERVAL_S
        try:
            self._append_line(path, line + "\n")
            if sync:
                self._fsync_path(path)
        except OSError as exc:
            raise write_error(path, exc, f"(episode {episode.get('episode')})") from exc
        if sync:
            self._synced_at, self._unsynced = now, False
        else:
            self._unsynced = True
        stored = json.loads(line)
        _check_episode(stored, len(self.episodes))  # a non-finite reward is read back as the float it was
        self.episodes.append(stored)
        if _better(self.episodes[-1], self.best):
            self.best = self.episodes[-1]
            try:  # derived from the records (a resume recomputes it): fsynced when they are
                atomic_write_text(self.path / BEST, json.dumps(self.best, indent=2) + "\n", fsync=sync)
            except OSError as exc:
                raise write_error(self.path / BEST, exc) from exc
            return True
        return False

    @staticmethod
    def _append_line(path: Path, text: str) -> None:
        """Append ``text`` and flush it to the OS (a killed process keeps it)."""
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()

    @staticmethod
    def _fsync_path(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _sync(self) -> None:
        """fsync the episodes appended since the last fsync (and ``best.json``)."""
        if not self._unsynced:
            return
        self._unsynced = False
        with contextlib.suppress(OSError):  # a failed write was already raised by append
            self._fsync_path(self.path / EPISODES)
            if (self.path / BEST).is_file():
                self._fsync_path(self.path / BEST)

    def close(self) -> None:
        """fsync the episodes not fsynced yet and release the folder's lock (idempotent)."""
        self._sync()
        if self._lock is not None:
            self._lock.release()

    def discard(self) -> None:
        """Undo a new run that failed before its first episode, so the corrected command is
        not refused: the folder is removed if this process created it, else its config."""
        if not self.new or self.episodes:
            return
        if self._created:  # remove what this process made while it still holds the lock
            _remove_contents(self.path)
        else:
            (self.path / CONFIG).unlink(missing_ok=True)
            # and the TensorBoard files this process began (their names end in .<pid>.<n>)
            for events in self.path.rglob(f"events.out.tfevents.*.{os.getpid()}.*"):
                events.unlink(missing_ok=True)
        self.close()
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()


def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read a run folder (for analysis). Nothing is written and no lock is taken: the run may
    be live, and a half-written last line (the episode in flight, or a kill) is skipped.

    Raises:
        DamagedRunError: a line other than the last is damaged (names the file and line).
    """
    record = RunRecord(Path(path))
    record._load(repair=False)
    return record


def run_episode(path: str | os.PathLike[str], episode: int | None = None) -> tuple[RunRecord, dict[str, Any]]:
    """``(the run, its best episode record)``, or episode ``episode`` of it: what replay,
    re-training and export read from a search's run folder.

    Raises:
        FileNotFoundError: ``path`` is not a run folder, or no episode is scored yet.
        ValueError: there is no episode ``episode``.
        DamagedRunError: see :func:`read_run`.
    """
    run_dir = Path(path)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir / CONFIG} does not exist: {run_dir} is not a search run folder "
                                "(pass the folder the search wrote, e.g. runs/<env>__<agent>__seed0)")
    run = read_run(run_dir)
    if episode is None:
        if run.best is None:
            raise FileNotFoundError(f"{run_dir} has no scored episode yet: let the search run")
        return run, run.best
    if 0 <= int(episode) < len(run.episodes):
        return run, run.episodes[int(episode)]
    raise ValueError(f"{run_dir / EPISODES} has no episode {episode} (it holds {len(run.episodes)})")
