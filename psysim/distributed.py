"""Scale-out on Ray: a run's batches spread over Ray actors, each holding one backend.

``psysim run EXP --engine ray [--address ADDR] [--workers N]`` does what a
plain run does, batch by batch, except that batches are scored by Ray actors
(:class:`BatchWorker`, one backend each: ``hf`` or ``vllm``; one GPU each where
the cluster has GPUs). Ray schedules them (``ray.util.ActorPool``) and
retries a batch whose worker died on a restarted worker; psysim adds no
scheduler, queue or RPC of its own.

**Where data lives.** Workers *return their tables to the driver*, which
writes each batch into the run folder as it arrives (:mod:`psysim.store`),
exactly as a single-process run does: the run folder needs to exist only
where ``psysim run`` was started, and an interrupted distributed run resumes
with the same command. The experiment (data, profiles, templates) travels to
the workers with the task, so workers need no copy of the input files; each
node needs psysim installed and the model's weights at the path the driver
resolved (``psysim models pull`` on every node, or a shared cache: set
``PSYSIM_CACHE`` to shared storage).

**Numbers.** A batch's rows are computed by the same code wherever it runs
(:func:`psysim.run.score_batch`); with the same threads per worker as a
single-process run (``--threads``), the tables are equal exactly.

**Network.** Without ``--address``, psysim starts a private Ray instance on
this machine that listens on 127.0.0.1 only (Ray's local-only mode; by
default Ray listens on every interface) and stops it at the end. With
``--address``, psysim checks within seconds that the head answers, then
joins it (token authentication: ``RAY_AUTH_TOKEN`` or the head's token file).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from typing import Any

from .errors import PsysimError

__all__ = ["CONNECT_TIMEOUT", "INSTALL", "RayEngine", "ray_engine"]

#: How to get Ray, said wherever it is missing.
INSTALL = "pip install 'psysim[ray]'"
#: Seconds to wait for a Ray head to answer before saying it is unreachable.
CONNECT_TIMEOUT = 5.0
#: How often Ray restarts a dead worker and retries its batch before the run stops (resumably).
RETRIES = 2


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PsysimError(f"--engine ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


def _reachable(address: str) -> None:
    """Fail within :data:`CONNECT_TIMEOUT` seconds if nothing answers at ``address`` (``host:port`` or ``ray://host:port``)."""
    if address == "auto":
        return  # Ray finds a head started on this machine (`ray start --head`), or says there is none
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise PsysimError(f"--address: expected host:port (e.g. 127.0.0.1:6379) or ray://host:port, found {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise PsysimError(f"cannot reach a Ray head at {address}: {exc.strerror or exc}") from None


class RayEngine:
    """A connection to Ray (started here or joined) that computes a model's batches on :class:`BatchWorker` actors."""

    def __init__(self, ray, workers: int | None, threads: int, address: str | None):
        self.ray = ray
        self.workers = workers
        self.threads = threads
        self.address = address

    def describe(self) -> dict[str, Any]:
        """What the run's manifest records about the engine (not part of the fingerprint: it does not change numbers)."""
        return {"engine": "ray", "address": self.address or "local", "workers": self.workers, "threads": self.threads}

    def _worker_count(self, model, todo: int) -> tuple[int, int]:
        """``(workers, GPUs per worker)``: one per GPU for a GPU model where the cluster has GPUs, else per CPU budget."""
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        per_gpu = 1 if gpus and model.device != "cpu" and model.backend != "mock" else 0
        n = self.workers or (gpus if per_gpu else max(1, int(resources.get("CPU", 1)) // self.threads))
        return max(1, min(n, todo)), per_gpu

    def batches(self, model, folder, shared, jobs, *, method: str, dry_run: bool, on_identity) -> Iterator[Any]:
        """Run ``BatchWorker.<method>(shared, *job)`` for every job on workers holding ``model``; yield results as they come.

        ``folder`` resolves the model entry's relative paths (the experiment file's folder).
        ``shared`` (the experiment, for instance) goes to Ray's object store once and travels
        with each task, not with the actors: an actor that Ray restarts after a
        crash is rebuilt from its small constructor arguments alone.
        ``on_identity`` receives the backend's identity before the first result.
        """
        from ray.exceptions import RayActorError, RayTaskError
        from ray.util import ActorPool

        ray = self.ray
        n, gpus = self._worker_count(model, len(jobs))
        worker = ray.remote(BatchWorker).options(
            num_cpus=self.threads, num_gpus=gpus, max_restarts=RETRIES, max_task_retries=RETRIES
        )
        ref = ray.put(shared)
        actors = [worker.remote(model, folder, dry_run, self.threads) for _ in range(n)]
        try:
            on_identity(ray.get(actors[0].identity.remote()))
            pool = ActorPool(actors)
            try:
                yield from pool.map_unordered(lambda a, job: getattr(a, method).remote(ref, *job), jobs)
            except RayTaskError as exc:
                cause = exc.as_instanceof_cause()
                if isinstance(cause, PsysimError):
                    raise cause from None
                raise PsysimError(f"a Ray worker failed on model {model.name!r}: {type(cause).__name__}: {cause}") from None
            except RayActorError as exc:
                raise PsysimError(
                    f"a Ray worker died {RETRIES + 1} times on model {model.name!r} ({type(exc).__name__}); every batch "
                    f"finished before is saved: run the same command again to resume"
                ) from None
        finally:
            for a in actors:
                ray.kill(a)


class BatchWorker:
    """One Ray actor: loads one model's backend once, then scores batches of participants (:func:`psysim.run.score_batch`)."""

    def __init__(self, model, folder, dry_run: bool, threads: int):
        from .backends.hf import THREADS_ENV
        from .progress import quiet_libraries
        from .run import backend_for

        os.environ[THREADS_ENV] = str(threads)  # torch's threads: this worker's CPUs, as psysim --threads would
        quiet_libraries(progress=False)
        self.model = model
        self.backend = backend_for(model, folder, None, dry_run, progress=False)

    def identity(self) -> dict[str, Any]:
        """The backend's identity (recorded in the manifest by the driver)."""
        return self.backend.identity()

    def score(self, exp, batch: int, pids: list[str]):
        """``(batch, its rows)`` of a run: the rows go back to the driver, which saves them."""
        from .run import score_batch

        return batch, score_batch(exp, self.model, self.backend, pids)

    def simulate(self, shared, unit: int, batch: int, ci: int, people: list):
        """``(unit, batch, rows, transcripts)`` of a simulation (:func:`psysim.simulate.simulate_batch`).

        ``shared`` is ``(experiment, cohort by id, shuffled-persona partners, cohort rank)``.
        """
        from .simulate import simulate_batch

        exp, by_id, shuffle, rank = shared
        return (unit, batch, *simulate_batch(exp, self.backend, self.model, ci, people, by_id, shuffle, rank))


@contextlib.contextmanager
def ray_engine(address: str | None = None, workers: int | None = None, threads: int = 1) -> Iterator[RayEngine]:
    """Connect to Ray for a run: start a private loopback-only instance, or join ``address``; always leave it as found.

    An unreachable ``address`` fails within :data:`CONNECT_TIMEOUT` seconds;
    a Ray already initialised in this process (a notebook) is used as it is.
    """
    if workers is not None and workers < 1:
        raise PsysimError(f"--workers must be at least 1, found {workers}")
    already_imported = "ray" in sys.modules
    if address:
        _reachable(address)
    else:
        # Before Ray is imported: its local-only mode binds every server to 127.0.0.1 (see module docstring).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = _import_ray()
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        if address:
            kwargs["address"] = address
        else:
            if already_imported and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
                raise PsysimError(
                    "Ray was imported before psysim could keep it on 127.0.0.1; set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
                    "in the environment, or start a head yourself and pass --address"
                )
            kwargs.update(num_cpus=(workers or 0) * threads or None, _node_ip_address="127.0.0.1")
        try:
            ray.init(**kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, auth errors: all mean "no Ray to use"
            raise PsysimError(f"cannot start or join Ray ({address or 'local'}): {type(exc).__name__}: {exc}") from None
        started = True
    try:
        yield RayEngine(ray, workers, threads, address)
    finally:
        if started:
            ray.shutdown()
