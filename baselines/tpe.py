"""Tree-structured Parzen estimator (Optuna) over the per-step action vector.

The study lives in ``<run>/optuna.db`` (SQLite) unless ``storage`` names another Optuna RDB
URL; several processes or machines that pass the same ``storage`` and ``study_name`` search
one study together, each recording its own episodes in its own run folder::

    python scripts/search.py --env ChannelPrune-ResNet20-v0 --agent tpe --episodes 100 \\
        --storage sqlite:////shared/tpe.db --study-name r20-tpe --run-name worker0 --seed 0
    python scripts/search.py ... --storage sqlite:////shared/tpe.db --study-name r20-tpe --run-name worker1 --seed 1

(For many machines, a PostgreSQL/MySQL URL works the same way.)

``storage="memory"`` keeps the study in the process (Optuna's in-memory storage): the same
trials as the SQLite file for a new run (the sampler sees the same trials in the same order),
without SQLite's commits (about 12 an episode, the most of TPE's time on a surrogate env). A
resumed run rebuilds its study from the run's records, as it does when ``optuna.db`` is lost.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from pf_agents.base import BlackBoxAgent

T = TypeVar("T")


def _sqlite_path(storage: str) -> Path | None:
    """The database file of a SQLite URL, or None for other URLs and in-memory SQLite."""
    from sqlalchemy.engine import make_url

    url = make_url(storage)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


@contextmanager
def storage_creation_lock(storage: str) -> Iterator[None]:
    """Serialise the creation of a SQLite storage between processes on one machine.

    Optuna creates its schema (``alembic_version`` and the study tables) on first use without
    a lock, so two processes opening one new file at once can fail with ``table ... already
    exists`` or a duplicate ``alembic_version`` row. An exclusive ``flock`` on ``<db>.lock``
    makes the second wait until the first has finished. Other URLs (PostgreSQL, MySQL; SQLite
    on a system without ``fcntl``) rely on :func:`retry_storage_race` alone."""
    path = _sqlite_path(storage)
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None  # type: ignore[assignment]
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_RACE_MARKERS = ("locked", "already exists", "unique constraint", "duplicate")


def retry_storage_race(open_fn: Callable[[], T], attempts: int = 8) -> T:
    """Call ``open_fn`` (which opens an Optuna RDB storage/study), retrying on the races of
    several processes creating one storage at once (a second ``CREATE TABLE`` or
    ``alembic_version`` insert, ``database is locked``), with jittered exponential back-off.
    Any other error (a wrong URL, an unreachable server) is raised at once."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            return open_fn()
        except (IntegrityError, OperationalError, ProgrammingError) as exc:
            message = str(exc).lower()
            race = isinstance(exc, IntegrityError) or any(m in message for m in _RACE_MARKERS)
            if not race or attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")


def open_study(storage: str, study_name: str, sampler: Any, default: bool) -> Any:
    """Create or load the study (maximising), serialised and retried against other processes.

    Raises:
        ValueError: the storage cannot be opened (a damaged or foreign ``optuna.db``, a
            wrong URL), naming it and saying what to do.
    """
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with storage_creation_lock(storage):
            return retry_storage_race(lambda: optuna.create_study(
                study_name=study_name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
            ))
    except (SQLAlchemyError, ValueError, RuntimeError, OSError) as exc:
        reason = str(exc).splitlines()[0]
        path = _sqlite_path(storage)
        if default and path is not None:
            raise ValueError(
                f"cannot open the TPE study in {path} ({reason}): the file is damaged or not an Optuna "
                "database. Delete it (the study is rebuilt from the run's records on --resume), or pass "
                "--storage with another database"
            ) from exc
        raise ValueError(
            f"cannot open the TPE study {study_name!r} in --storage {storage} ({reason}): check the URL, the "
            "server, and that the file is an Optuna database"
        ) from exc


class TPEAgent(BlackBoxAgent):
    name = "tpe"
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "storage": None, "study_name": None, "n_startup_trials": 10, "multivariate": True,
    }

    def run(self) -> None:
        import optuna
        from optuna.distributions import BaseDistribution, FloatDistribution
        from optuna.trial import TrialState, create_trial

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = self.config["storage"] or f"sqlite:///{(self.run_dir / 'optuna.db').resolve()}"
        study_name = self.config["study_name"] or self.run_dir.name
        sampler = optuna.samplers.TPESampler(
            seed=self.seed, n_startup_trials=int(self.config["n_startup_trials"]),
            multivariate=bool(self.config["multivariate"]),
        )
        if storage == "memory":
            study = optuna.create_study(study_name=study_name, sampler=sampler, direction="maximize")
        else:
            study = open_study(storage, study_name, sampler, default=not self.config["storage"])
        dists: dict[str, BaseDistribution] = {f"a{i}": FloatDistribution(-1.0, 1.0) for i in range(self.steps)}
        run = self.run_dir.name
        # Reconcile with the records: trials of this run that were cut short are failed, and
        # recorded episodes the study never heard of (killed between the two) are added.
        told = set()
        for frozen in study.get_trials(deepcopy=False):
            if frozen.user_attrs.get("run") != run:
                continue
            if frozen.state == TrialState.RUNNING:
                study.tell(frozen.number, state=TrialState.FAIL)
            elif frozen.state == TrialState.COMPLETE:
                told.add(frozen.user_attrs.get("episode"))
        for ep in self.history:
            if ep["episode"] not in told:
                params = {f"a{i}": float(np.clip(a, -1, 1)) for i, a in enumerate(ep["raw_actions"])}
                study.add_trial(create_trial(params=params, distributions=dists, value=float(ep["reward"]),
                                             user_attrs={"run": run, "episode": ep["episode"]}))
        while not self.budget.exhausted:
            trial = study.ask(dists)
            trial.set_user_attr("run", run)
            trial.set_user_attr("episode", self.budget.done)
            self.env.agent_info = {"trial": trial.number, "study": study_name}
            x = np.array([trial.params[f"a{i}"] for i in range(self.steps)])
            try:
                reward, _ = self.play(x)
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            study.tell(trial, reward)
