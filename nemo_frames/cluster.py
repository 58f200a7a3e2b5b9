"""One way to get a Dask client on every environment nemo_frames runs on.

``get_client(kind=...)`` covers a laptop or CPU server (``"local"``), one GPU node
(``"gpu"``, dask-cuda), a Slurm allocation (``"slurm"``, dask-jobqueue) and an
already running scheduler (``"address"``). Every kind gets the same safety
defaults: a task that kills ``allowed-failures + 1`` workers fails with
``KilledWorker``, and tasks waiting with zero workers fail after
``no-workers-timeout`` instead of hanging.

Defaults live in ``dask.config`` under ``nemo_frames.cluster.*``; an explicit
argument always beats them::

    nemo_frames:
      cluster:
        n-workers: null            # null: sized to CPUs and model memory
        threads-per-worker: null   # null: 1 (torch-heavy scoring)
        memory-limit: null         # null: total memory / n_workers
        model-memory-gb: null      # resident model size per worker
        model-memory-fraction: 0.5 # share of a worker's memory a model may use
        torch-threads: null        # null: CPUs / (workers * threads)
        malloc-trim-threshold: 64MiB  # glibc heap tuning in worker processes (null: Dask's)
        malloc-mmap-threshold: 32MiB
        allowed-failures: 3
        no-workers-timeout: 60s
        connect-timeout: 30s

dask-cuda, rmm, torch and dask-jobqueue are imported only inside the functions
that need them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask
import dask.config
import dask.system
import distributed
from dask.utils import format_bytes, parse_bytes, parse_timedelta
from distributed import Client, WorkerPlugin

ClusterKind = Literal["local", "gpu", "slurm", "address"]

GPU_INSTALL_HINT = "pip install 'nemo-frames[gpu]'"
SLURM_INSTALL_HINT = "pip install 'nemo-frames[slurm]'"

# Threading knobs read by BLAS / OpenMP / torch when they are first imported in a worker.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

dask.config.update_defaults(
    {
        "nemo_frames": {
            "cluster": {
                "n-workers": None,
                "threads-per-worker": None,
                "memory-limit": None,
                "model-memory-gb": None,
                "model-memory-fraction": 0.5,
                "torch-threads": None,
                "malloc-trim-threshold": "64MiB",
                "malloc-mmap-threshold": "32MiB",
                "profile-history": 120,
                "allowed-failures": 3,
                "no-workers-timeout": "60s",
                "connect-timeout": "30s",
            }
        }
    }
)


class ClusterError(RuntimeError):
    """A cluster could not be started, reached, or kept alive."""


class ClusterLostError(ClusterError):
    """All workers disappeared while work was pending."""


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class GpuOptions:
    """Settings for GPU workers (``kind="gpu"`` and GPU Slurm jobs).

    Parameters
    ----------
    devices
        GPUs to use (``"0,1"`` or ``[0, 1]``); ``None`` uses every visible GPU. One worker per GPU.
    rmm_pool_size
        Per-worker RMM pool: a fraction of GPU memory (``0.8``), bytes, or ``"30GB"``. Leaves room for
        the CUDA context (200–500 MB), so not ``1.0``.
    rmm_maximum_pool_size
        Upper bound the pool may grow to; ``None`` lets it grow to the device.
    enable_cudf_spill
        cuDF's buffer-level device→host spilling (recommended by dask-cuda for Dask-cuDF ETL).
    torch_on_rmm, cupy_on_rmm
        Route PyTorch / CuPy allocations through the worker's RMM pool, so CLIP and cuDF share one
        pool instead of fighting over the device.
    protocol
        ``"tcp"`` or ``"ucx"`` (NVLink / InfiniBand through UCXX).
    local_directory
        Where host→disk spilling goes; put it on node-local scratch.
    extra
        Further keyword arguments for ``LocalCUDACluster``.

    Examples
    --------
    >>> GpuOptions(devices="0,1", rmm_pool_size="30GB").rmm_pool_size
    '30GB'
    """

    devices: str | list[int] | None = None
    rmm_pool_size: float | int | str | None = 0.8
    rmm_maximum_pool_size: float | int | str | None = None
    enable_cudf_spill: bool = True
    torch_on_rmm: bool = True
    cupy_on_rmm: bool = True
    protocol: Literal["tcp", "ucx"] = "tcp"
    local_directory: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SlurmOptions:
    """Settings for ``kind="slurm"``: one Slurm job per node, several Dask workers per job.

    Parameters
    ----------
    gpus_per_node
        ``0`` starts CPU workers (``distributed.cli.dask_worker``); ``N > 0`` requests
        ``--gres=gpu:N`` and starts ``dask_cuda.cli``, which runs one worker per GPU.
    workers_per_node
        CPU jobs only: worker processes per job (GPU jobs always get one per GPU).
    cores_per_worker, memory_per_worker
        Threads and memory limit of **each** worker. The job requests
        ``workers × cores_per_worker`` CPUs and ``workers × memory_per_worker`` memory unless
        ``job_cpu`` / ``job_mem`` say otherwise. (dask-jobqueue passes per-process values to
        ``dask_cuda.cli``, which then repeats them for every GPU, hence per-worker here.)
    walltime
        Slurm ``-t`` (``"HH:MM:SS"`` or ``"D-HH:MM:SS"``).
    lifetime, lifetime_stagger, lifetime_restart
        Worker ``--lifetime`` (default: walltime − stagger − a safety margin of max(5 min, 5 %)),
        ``--lifetime-stagger`` so workers of one job do not all leave at once, and
        ``--lifetime-restart`` (restart the worker in place; only useful against memory leaks in
        long jobs, not to outlive the walltime).
    account, partition, qos
        ``-A``, ``-p``, ``--qos``.
    local_directory
        Worker scratch / spill directory, expanded by the job's shell. Node-local disk.
    log_directory
        Where Slurm writes job output.
    prologue
        Shell lines run before the worker starts (``module load ...``, ``source venv/bin/activate``).
    python
        Interpreter on the compute nodes; default: this process's ``sys.executable``.
    interface
        Network interface for workers and scheduler (e.g. ``"ib0"``).
    jobs, max_jobs
        ``scale(jobs=jobs)``; with ``max_jobs`` set, ``adapt(minimum_jobs=jobs, maximum_jobs=max_jobs)``.
    job_extra_directives, worker_extra_args
        Extra ``#SBATCH`` lines and extra worker arguments.
    no_workers_timeout
        Longer than for local clusters: workers may wait in the Slurm queue.

    Examples
    --------
    >>> opts = SlurmOptions(gpus_per_node=8, cores_per_worker=2, memory_per_worker="24GB",
    ...                     walltime="04:00:00", partition="gpu")
    >>> "--gres=gpu:8" in slurm_job_script(opts)
    True
    """

    gpus_per_node: int = 0
    workers_per_node: int = 1
    cores_per_worker: int = 4
    memory_per_worker: str = "16GB"
    job_cpu: int | None = None
    job_mem: str | None = None
    walltime: str = "04:00:00"
    lifetime: str | None = None
    lifetime_stagger: str = "4m"
    lifetime_restart: bool = False
    account: str | None = None
    partition: str | None = None
    qos: str | None = None
    local_directory: str = "${TMPDIR:-/tmp}"
    log_directory: str | None = None
    prologue: tuple[str, ...] | list[str] = ()
    python: str | None = None
    interface: str | None = None
    jobs: int = 1
    max_jobs: int | None = None
    job_name: str = "nemo-frames"
    job_extra_directives: tuple[str, ...] | list[str] = ()
    worker_extra_args: tuple[str, ...] | list[str] = ()
    no_workers_timeout: str | None = "30 minutes"


# ----------------------------------------------------------------------------- worker plugins


class ThreadLimitsPlugin(WorkerPlugin):
    """Pin BLAS/OpenMP/torch threads in every worker (including workers that join later).

    The environment variables matter for libraries imported after the plugin runs (torch reads
    ``OMP_NUM_THREADS`` at import); ``torch.set_num_threads`` covers a torch that is already
    imported, or every worker when ``import_torch=True``.

    Examples
    --------
    >>> ThreadLimitsPlugin(threads=2).threads
    2
    """

    name = "nemo-frames-thread-limits"

    def __init__(self, threads: int, *, import_torch: bool = False) -> None:
        if threads < 1:
            raise ValueError(f"ThreadLimitsPlugin: threads must be >= 1, found {threads}")
        self.threads = int(threads)
        self.import_torch = import_torch

    def setup(self, worker: distributed.Worker) -> None:
        for var in THREAD_ENV_VARS:
            os.environ[var] = str(self.threads)
        if self.import_torch or "torch" in sys.modules:
            import torch

            torch.set_num_threads(self.threads)


class RmmAllocatorPlugin(WorkerPlugin):
    """Route torch and CuPy allocations through the worker's RMM pool.

    Written against the documented API (``rmm.allocators.torch.rmm_torch_allocator``,
    ``torch.cuda.memory.change_current_allocator``, ``rmm.allocators.cupy.rmm_cupy_allocator``);
    **not executed** in this project's CI (no GPU). Must run before torch allocates on the GPU:
    torch refuses to change an allocator that is already in use.
    """

    name = "nemo-frames-rmm-allocators"

    def __init__(self, *, torch: bool = True, cupy: bool = True) -> None:
        self.torch = torch
        self.cupy = cupy

    def setup(self, worker: distributed.Worker) -> None:
        if self.cupy:
            with contextlib.suppress(ImportError):
                import cupy
                from rmm.allocators.cupy import rmm_cupy_allocator

                cupy.cuda.set_allocator(rmm_cupy_allocator)
        if self.torch:
            try:
                import torch
                from rmm.allocators.torch import rmm_torch_allocator
            except ImportError:
                return
            try:
                torch.cuda.memory.change_current_allocator(rmm_torch_allocator)
            except RuntimeError as exc:
                raise ClusterError(
                    "gpu cluster: could not put torch on the RMM allocator because torch already "
                    f"allocated GPU memory in this worker ({exc}). Fix: do not import/use torch on the "
                    "GPU before the cluster starts (e.g. remove torch from pre_import), or pass "
                    "GpuOptions(torch_on_rmm=False)."
                ) from exc


# ----------------------------------------------------------------------------- clients


@contextlib.contextmanager
def _quiet_teardown() -> Iterator[None]:
    # Tearing down a finished job makes the scheduler and nannies warn about "lost" results
    # that nobody needs any more; those warnings read like failures, so hush them for the close.
    quiet = [logging.getLogger(n) for n in ("distributed.scheduler", "distributed.nanny", "distributed.worker")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lvl in zip(quiet, levels, strict=True):
            lg.setLevel(lvl)


class OwningClient(Client):
    """A ``distributed.Client`` that owns the cluster :func:`get_client` started for it.

    A plain ``Client(cluster)`` leaves the cluster running when the client closes, so
    ``with get_client(...) as client:`` would leak its worker processes (each holding its
    loaded models) until the interpreter exits. Closing this client (``close()``, the end of
    a ``with`` block) closes the cluster too; a client that is only garbage-collected leaves its
    cluster to the cluster's own finalizer.
    """

    _collected = False

    def __del__(self) -> None:
        # From the garbage collector the cluster is left to its own finalizer: closing it here can run
        # inside another cluster's start-up (a collection during LocalCluster.__init__) and deadlock on
        # distributed's loop-runner lock.
        self._collected = True
        super().__del__()

    def close(self, timeout: Any = None) -> Any:  # type: ignore[override]
        owned = None if self._collected else self.cluster
        with _quiet_teardown():
            out = super().close() if timeout is None else super().close(timeout=timeout)
            if owned is not None:
                # Closing a closed cluster is a no-op; at interpreter exit it may already be gone.
                with contextlib.suppress(Exception):
                    owned.close()
        return out


# ----------------------------------------------------------------------------- sizing helpers


def _cfg(name: str, value: Any) -> Any:
    """An explicit argument, else the ``nemo_frames.cluster.<name>`` config value."""
    if value is not None:
        return value
    return dask.config.get(f"nemo_frames.cluster.{name}", default=None)


def machine_resources() -> dict[str, int]:
    """CPUs and memory this process may use (affinity, cgroup quotas and rlimits applied).

    Examples
    --------
    >>> r = machine_resources()
    >>> r["cpus"] >= 1 and r["memory_bytes"] > 0
    True
    """
    from distributed.system import memory_limit

    return {"cpus": dask.system.cpu_count(), "memory_bytes": memory_limit()}


def _as_bytes(value: int | float | str) -> int:
    return int(parse_bytes(value)) if isinstance(value, str) else int(value)


def plan_local(
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: int | str | None = None,
    model_memory_gb: float | None = None,
    torch_threads: int | None = None,
    cpus: int | None = None,
    memory_bytes: int | None = None,
) -> dict[str, int]:
    """Worker count, threads and memory for a local cluster, without starting it.

    Explicit arguments beat ``nemo_frames.cluster.*`` config values, which beat the
    automatic sizing: one thread per worker, as many workers as CPUs, capped so that each
    worker's memory limit holds the model with room for data (the model may take at most
    ``model-memory-fraction`` of it, 0.5 by default: partitions need the rest before Dask
    starts spilling at 70 %).

    Returns
    -------
    dict
        ``n_workers``, ``threads_per_worker``, ``memory_limit`` (bytes per worker) and
        ``torch_threads``.

    Examples
    --------
    >>> plan_local(model_memory_gb=4, cpus=16, memory_bytes=32 * 2**30)["n_workers"]
    4
    """
    res = machine_resources() if cpus is None or memory_bytes is None else {}
    cpus = cpus or res["cpus"]
    total = memory_bytes or res["memory_bytes"]
    threads = int(_cfg("threads-per-worker", threads_per_worker) or 1)
    if threads < 1:
        raise ValueError(f"get_client: threads_per_worker must be >= 1, found {threads}")
    model_gb = _cfg("model-memory-gb", model_memory_gb)
    fraction = float(dask.config.get("nemo_frames.cluster.model-memory-fraction", default=0.5))

    explicit_workers = _cfg("n-workers", n_workers)
    workers = int(explicit_workers) if explicit_workers is not None else max(1, cpus // threads)
    if model_gb:
        need = float(model_gb) * 2**30 / fraction
        cap = int(total // need)
        if cap < 1:
            raise ClusterError(
                f"local cluster: a model needing {model_gb} GB per worker needs "
                f"{format_bytes(need)} per worker (model-memory-fraction={fraction}), but this "
                f"machine allows {format_bytes(total)}. Fix: use a smaller model or batch, run on "
                "a larger machine, or lower nemo_frames.cluster.model-memory-fraction."
            )
        if explicit_workers is None:
            workers = min(workers, cap)
        elif workers > cap:
            warnings.warn(
                f"local cluster: n_workers={workers} with a {model_gb} GB model needs "
                f"{format_bytes(need * workers)} but {format_bytes(total)} is available; "
                f"at most {cap} workers fit. Workers may be paused or killed for memory.",
                stacklevel=3,
            )
    if workers < 1:
        raise ValueError(f"get_client: n_workers must be >= 1, found {workers}")

    mem = _cfg("memory-limit", memory_limit)
    mem_bytes = _as_bytes(mem) if mem is not None else total // workers
    if model_gb and mem_bytes * fraction < float(model_gb) * 2**30:
        warnings.warn(
            f"local cluster: memory_limit={format_bytes(mem_bytes)} per worker leaves less than "
            f"{fraction:.0%} for a {model_gb} GB model; expect spilling or worker restarts.",
            stacklevel=3,
        )
    tthreads = _cfg("torch-threads", torch_threads)
    tthreads = int(tthreads) if tthreads is not None else max(1, cpus // (workers * threads))
    return {
        "n_workers": workers,
        "threads_per_worker": threads,
        "memory_limit": int(mem_bytes),
        "torch_threads": tthreads,
    }


@contextlib.contextmanager
def _scheduler_safety(no_workers_timeout: str | float | None) -> Iterator[None]:
    """Scheduler config read at scheduler construction (in-process for local and Slurm)."""
    with dask.config.set(
        {
            "distributed.scheduler.allowed-failures": int(dask.config.get("nemo_frames.cluster.allowed-failures")),
            "distributed.scheduler.no-workers-timeout": no_workers_timeout,
        }
    ):
        yield


MALLOC_ENV_VARS = {"malloc-trim-threshold": "MALLOC_TRIM_THRESHOLD_", "malloc-mmap-threshold": "MALLOC_MMAP_THRESHOLD_"}


def worker_malloc_env() -> dict[str, str]:
    """glibc malloc settings for worker processes, from ``nemo_frames.cluster.malloc-*``.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that freed memory goes
    back to the OS quickly. Setting that variable also freezes glibc's mmap threshold at 128 KiB,
    so every decoded image and every activation tensor above it is a fresh ``mmap`` whose pages
    fault in on first touch and are unmapped on free. Measured on this project's pixel metrics
    (192 photos at 512 px, one worker): blur 0.20 s in a plain process vs 0.51 s in a Dask
    worker, QR 1.35 s vs 1.65 s. A 64 MiB trim threshold with a 32 MiB mmap threshold (glibc's
    own dynamic ceiling on 64-bit) removes that cost; freed memory above 64 MiB at the top of the
    heap is still returned. ``null`` for both keeps Dask's setting; a variable already set in
    the environment that starts the cluster wins over both (Dask's precedence).

    Returns
    -------
    dict
        Environment variable name → value in bytes, for ``distributed.nanny.pre-spawn-environ``.

    Examples
    --------
    >>> worker_malloc_env()["MALLOC_TRIM_THRESHOLD_"]
    '67108864'
    """
    out = {}
    for key, var in MALLOC_ENV_VARS.items():
        value = dask.config.get(f"nemo_frames.cluster.{key}", default=None)
        if value is not None:
            out[var] = str(_as_bytes(value))
    return out


# The malloc variables as this process was started with them. A nanny copies its pre-spawn
# variables into *this* process's environment, where the next nanny would take them as the
# user's own setting; only values that were here at start-up count as the user's.
_LAUNCH_MALLOC_ENV = {var: os.environ.get(var) for var in MALLOC_ENV_VARS.values()}


@contextlib.contextmanager
def _worker_process_env() -> Iterator[None]:
    """Nanny config read when worker processes are created (and reused when they restart)."""
    env = worker_malloc_env()
    leaked = {
        var: os.environ.pop(var)
        for var, launch in _LAUNCH_MALLOC_ENV.items()
        if launch is None and var in os.environ
    }
    settings: dict[str, Any] = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}
    history = dask.config.get("nemo_frames.cluster.profile-history", default=None)
    if history is not None:
        # A worker keeps one statistical-profile tree per second (and a deep copy per task
        # prefix) for distributed.admin.low-level-log-length seconds, 1,000 by default: ~0.2 MB
        # a second while scoring, so a long run's workers grew by up to ~0.25 GB against a short
        # run's. The dashboard's profile still covers the last `profile-history` seconds.
        settings["distributed.admin.low-level-log-length"] = int(history)
    try:
        with dask.config.set(settings):
            yield
    finally:
        for var, value in leaked.items():
            os.environ.setdefault(var, value)


def _walltime_seconds(walltime: str) -> float:
    days = 0
    if "-" in walltime:
        d, walltime = walltime.split("-", 1)
        days = int(d)
    parts = [int(p) for p in walltime.split(":")]
    if len(parts) == 1:  # Slurm: bare number = minutes
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = parts[0], parts[1], 0
    else:
        h, m, s = parts[-3:]
    return days * 86400 + h * 3600 + m * 60 + s


def _slurm_lifetime(opts: SlurmOptions) -> str:
    if opts.lifetime is not None:
        return opts.lifetime
    wall = _walltime_seconds(opts.walltime)
    stagger = parse_timedelta(opts.lifetime_stagger)
    margin = max(300.0, 0.05 * wall)
    life = wall - stagger - margin
    if life <= 60:
        raise ValueError(
            f"slurm cluster: walltime {opts.walltime} is too short for lifetime-stagger "
            f"{opts.lifetime_stagger} plus a {margin / 60:.0f} min margin; raise walltime or set "
            "SlurmOptions(lifetime=...) explicitly."
        )
    return f"{int(life // 60)}m"


def _slurm_job_kwargs(opts: SlurmOptions, gpu: GpuOptions | None) -> dict[str, Any]:
    """Keyword arguments shared by ``SLURMJob`` (script only) and ``SLURMCluster``."""
    from dask_jobqueue.slurm import slurm_format_bytes_ceil

    if opts.gpus_per_node < 0:
        raise ValueError(f"slurm cluster: gpus_per_node must be >= 0, found {opts.gpus_per_node}")
    gpu_job = opts.gpus_per_node > 0
    workers = opts.gpus_per_node if gpu_job else max(1, opts.workers_per_node)
    mem_per_worker = _as_bytes(opts.memory_per_worker)
    extra_args = [
        "--lifetime",
        _slurm_lifetime(opts),
        "--lifetime-stagger",
        opts.lifetime_stagger,
    ]
    if opts.lifetime_restart:
        extra_args.append("--lifetime-restart")
    directives = list(opts.job_extra_directives)
    if gpu_job:
        g = gpu or GpuOptions()
        directives.append(f"--gres=gpu:{opts.gpus_per_node}")
        if g.rmm_pool_size is not None:
            extra_args += ["--rmm-pool-size", str(g.rmm_pool_size)]
        if g.rmm_maximum_pool_size is not None:
            extra_args += ["--rmm-maximum-pool-size", str(g.rmm_maximum_pool_size)]
        if g.enable_cudf_spill:
            extra_args.append("--enable-cudf-spill")
    if opts.qos:
        directives.append(f"--qos={opts.qos}")
    extra_args += list(opts.worker_extra_args)
    kwargs: dict[str, Any] = {
        # GPU: dask_cuda.cli gets per-process values and repeats them per GPU, so one "process".
        "cores": opts.cores_per_worker if gpu_job else opts.cores_per_worker * workers,
        "memory": mem_per_worker if gpu_job else mem_per_worker * workers,
        "processes": 1 if gpu_job else workers,
        "job_cpu": opts.job_cpu or opts.cores_per_worker * workers,
        "job_mem": opts.job_mem or slurm_format_bytes_ceil(mem_per_worker * workers),
        "walltime": opts.walltime,
        "queue": opts.partition,
        "account": opts.account,
        "job_name": opts.job_name,
        "local_directory": opts.local_directory,
        "log_directory": opts.log_directory,
        # The worker's nanny prefers an exported variable over its config (see worker_malloc_env).
        "job_script_prologue": [f"export {k}={v}" for k, v in worker_malloc_env().items()] + list(opts.prologue),
        "job_extra_directives": directives,
        "worker_extra_args": extra_args,
        "python": opts.python or sys.executable,
        "interface": opts.interface,
    }
    if gpu_job:
        kwargs["worker_command"] = "dask_cuda.cli"
    return kwargs


def _import_jobqueue() -> Any:
    try:
        import dask_jobqueue
    except ImportError as exc:
        raise ImportError(
            f"slurm cluster: dask-jobqueue is not installed. Fix: {SLURM_INSTALL_HINT}"
        ) from exc
    return dask_jobqueue


def slurm_job_script(options: SlurmOptions | None = None, *, gpu: GpuOptions | None = None) -> str:
    """The batch script ``kind="slurm"`` submits per job; needs no Slurm installation.

    The scheduler address is a placeholder (the real one is known only once the cluster runs).

    Examples
    --------
    >>> script = slurm_job_script(SlurmOptions(account="proj", partition="cpu"))
    >>> "#SBATCH -A proj" in script and "--lifetime" in script
    True
    """
    opts = options or SlurmOptions()
    jq = _import_jobqueue()
    job = jq.slurm.SLURMJob(
        scheduler="tcp://<scheduler-address>:8786", name="nemo-frames-worker", **_slurm_job_kwargs(opts, gpu)
    )
    return job.job_script()


# ----------------------------------------------------------------------------- get_client


# get_client's own keywords (besides ``kind``): valid for every kind.
_GET_CLIENT_OPTIONS = (
    "n_workers", "threads_per_worker", "memory_limit", "model_memory_gb", "torch_threads", "processes",
    "address", "slurm", "gpu", "no_workers_timeout", "connect_timeout", "dashboard",
)  # fmt: skip


class ClusterOptionError(ValueError):
    """A cluster option that the cluster class for this kind does not accept (a typo, usually)."""


def _init_params(cls: Any) -> set[str]:
    import inspect

    sig = inspect.signature(cls.__init__)
    return {p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)} - {"self"}


def _local_cuda_cluster_params() -> set[str] | None:
    """``LocalCUDACluster.__init__`` parameter names read from dask-cuda's source, without importing it.

    Importing dask_cuda initialises CUDA libraries (and fails on a machine without a GPU); parsing the file
    costs a millisecond. ``None`` when dask-cuda is not installed (``get_client`` then names the install).
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("dask_cuda")  # a top-level find_spec imports nothing
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        src = Path(loc) / "local_cuda_cluster.py"
        if not src.is_file():
            continue
        for node in ast.walk(ast.parse(src.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name == "LocalCUDACluster":
                for fn in node.body:
                    if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                        a = fn.args
                        return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs} - {"self"}
    return None


def cluster_option_names(kind: str, *, processes: bool = True) -> tuple[set[str], str] | None:
    """Keyword arguments ``get_client(kind, **options)`` accepts, and the classes they come from.

    Besides its own keywords, ``get_client`` forwards the rest to the cluster class, which forwards its own
    ``**kwargs`` on (``LocalCluster`` → ``Nanny`` → ``Worker``; ``SLURMCluster`` → ``SLURMJob`` → ``Job``), so
    a misspelt key would otherwise surface only when a worker process fails to start. Returns ``None`` when
    the class for ``kind`` is not installed (the kind then fails at start with an install hint).

    Examples
    --------
    >>> names, source = cluster_option_names("local")
    >>> "n_workers" in names and "lifetime" in names, source
    (True, 'get_client, distributed.LocalCluster, Nanny, Worker')
    """
    from distributed.core import Server

    worker = _init_params(distributed.Worker) | _init_params(Server)
    local = _init_params(distributed.LocalCluster)
    nanny = _init_params(distributed.Nanny)
    if kind in ("local", "threads"):
        if kind == "threads" or not processes:
            return set(_GET_CLIENT_OPTIONS) | local | worker, "get_client, distributed.LocalCluster, Worker"
        return set(_GET_CLIENT_OPTIONS) | local | nanny | worker, "get_client, distributed.LocalCluster, Nanny, Worker"
    if kind == "gpu":
        cuda = _local_cuda_cluster_params()
        if cuda is None:
            return None
        return (set(_GET_CLIENT_OPTIONS) | cuda | local | nanny | worker,
                "get_client, dask_cuda.LocalCUDACluster, distributed.LocalCluster, Nanny, Worker")
    if kind == "slurm":
        try:
            from dask_jobqueue.core import Job, JobQueueCluster
            from dask_jobqueue.slurm import SLURMJob
        except ImportError:
            return None
        names = _init_params(JobQueueCluster) | _init_params(SLURMJob) | _init_params(Job)
        return set(_GET_CLIENT_OPTIONS) | names, "get_client, dask_jobqueue.SLURMCluster, SLURMJob, Job"
    if kind == "address":
        return set(_GET_CLIENT_OPTIONS) | _init_params(distributed.Client), "get_client, distributed.Client"
    raise ClusterOptionError(
        f"cluster.kind: must be one of 'local', 'gpu', 'slurm', 'address', 'threads'; found {kind!r}"
    )


def check_cluster_options(kind: str, options: dict[str, Any], *, where: str = "cluster.options") -> None:
    """Raise :class:`ClusterOptionError` naming the first key ``get_client(kind, ...)`` would not accept.

    Checked before anything starts, so a typo (``n_wokers``) is a config error with a did-you-mean rather
    than ``RuntimeError: Nanny failed to start`` from a worker process many seconds later. A mapping given for
    ``slurm`` / ``gpu`` is checked against :class:`SlurmOptions` / :class:`GpuOptions` too.

    Examples
    --------
    >>> check_cluster_options("local", {"n_workers": 2})
    >>> check_cluster_options("local", {"n_wokers": 2})
    Traceback (most recent call last):
    ...
    nemo_frames.cluster.ClusterOptionError: cluster.options.n_wokers: unknown option 'n_wokers' for cluster kind 'local' (did you mean 'n_workers'?). Valid options are the keyword arguments of get_client, distributed.LocalCluster, Nanny, Worker; fix the key or remove it.
    """
    import dataclasses
    import difflib

    def unknown(key: str, valid: set[str], kind_name: str, source: str, at: str) -> ClusterOptionError:
        close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return ClusterOptionError(
            f"{at}.{key}: unknown option {key!r} for cluster kind {kind_name!r}{hint}. "
            f"Valid options are the keyword arguments of {source}; fix the key or remove it."
        )

    found = cluster_option_names(kind, processes=bool(options.get("processes", True)))
    if found is not None:
        valid, source = found
        for key in options:
            if key not in valid:
                raise unknown(str(key), valid, kind, source, where)
    for key, cls in (("slurm", SlurmOptions), ("gpu", GpuOptions)):
        sub = options.get(key)
        if isinstance(sub, dict):
            fields = {f.name for f in dataclasses.fields(cls)}
            for k in sub:
                if k not in fields:
                    raise unknown(str(k), fields, kind, f"nemo_frames.cluster.{cls.__name__}", f"{where}.{key}")


def get_client(
    kind: ClusterKind = "local",
    *,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit: int | str | None = None,
    model_memory_gb: float | None = None,
    torch_threads: int | None = None,
    processes: bool = True,
    address: str | None = None,
    slurm: SlurmOptions | dict[str, Any] | None = None,
    gpu: GpuOptions | dict[str, Any] | None = None,
    no_workers_timeout: str | float | None = None,
    connect_timeout: str | float | None = None,
    dashboard: bool = False,
    **kwargs: Any,
) -> Client:
    """A Dask client for a local, GPU-node, Slurm or existing cluster.

    Parameters
    ----------
    kind
        ``"local"`` (``LocalCluster``), ``"gpu"`` (``dask_cuda.LocalCUDACluster``, one worker
        per GPU), ``"slurm"`` (``dask_jobqueue.SLURMCluster``) or ``"address"`` (connect to a
        running scheduler at ``address``, a ``tcp://`` URL or a scheduler JSON file).
    n_workers, threads_per_worker, memory_limit, model_memory_gb, torch_threads
        Local sizing, see :func:`plan_local`. Explicit values beat ``nemo_frames.cluster.*``.
    processes
        Local only: worker processes (default) or threads in this process.
    address
        Scheduler address for ``kind="address"``.
    slurm, gpu
        Typed options for Slurm jobs and GPU workers (:class:`SlurmOptions`, :class:`GpuOptions`, or a
        mapping of their fields, as a YAML config gives).
    no_workers_timeout
        Tasks waiting with no workers fail after this long (``None``: config, 60 s; Slurm:
        ``SlurmOptions.no_workers_timeout``). Not applied to ``"address"``: that scheduler's own
        config rules; use :func:`wait_with_timeout` there.
    connect_timeout
        ``"address"`` only: how long to try to reach the scheduler.
    dashboard
        Start the dashboard on a free port (off by default: batch jobs do not need it).
    **kwargs
        Passed to the cluster class (or to ``Client`` for ``"address"``); checked first against what that
        class accepts (:func:`check_cluster_options`), so a typo raises :class:`ClusterOptionError` at once.

    Returns
    -------
    distributed.Client
        An :class:`OwningClient` for the kinds that start a cluster: ``client.close()`` or the end
        of a ``with get_client(...) as client:`` block closes that cluster too. For ``"address"``,
        a plain ``Client``: closing it leaves the scheduler running.

    Examples
    --------
    >>> with get_client("local", n_workers=1, processes=False) as client:
    ...     describe_client(client)["n_workers"]
    1
    """
    if kwargs:
        check_cluster_options(kind, {**kwargs, "processes": processes}, where="get_client")
    if isinstance(slurm, dict):
        check_cluster_options(kind, {"slurm": slurm}, where="get_client")
        slurm = SlurmOptions(**slurm)
    if isinstance(gpu, dict):
        check_cluster_options(kind, {"gpu": gpu}, where="get_client")
        gpu = GpuOptions(**gpu)
    nwt = no_workers_timeout if no_workers_timeout is not None else _cfg("no-workers-timeout", None)
    # A random port either way: the scheduler's HTTP server (health, metrics) starts even without
    # the dashboard, and the fixed default 8787 collides (with a warning) as soon as two clusters run.
    dash = ":0" if dashboard else None
    if kind == "local":
        plan = plan_local(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            memory_limit=memory_limit,
            model_memory_gb=model_memory_gb,
            torch_threads=torch_threads,
        )
        env = {var: str(plan["torch_threads"]) for var in THREAD_ENV_VARS}
        extra: dict[str, Any] = {"env": env} if processes else {}
        if dash is None:
            # Dashboard off, but the scheduler's HTTP server (health, metrics) still binds a port:
            # a random one, so a second cluster does not collide on 8787 with a warning.
            extra["scheduler_kwargs"] = {"dashboard_address": ":0", "dashboard": False, **kwargs.pop("scheduler_kwargs", {})}
        with _scheduler_safety(nwt), _worker_process_env():
            lc = distributed.LocalCluster(
                n_workers=plan["n_workers"],
                threads_per_worker=plan["threads_per_worker"],
                # In-process (thread) workers share this process's memory: Dask would compare the
                # whole process's RSS (driver, loaded models) with one worker's limit and pause the
                # worker for good. A per-worker limit only means something for worker processes.
                memory_limit=plan["memory_limit"] if processes or memory_limit is not None else 0,
                processes=processes,
                dashboard_address=dash,
                **extra,
                **kwargs,
            )
        client = OwningClient(lc, set_as_default=True)
        if processes:
            # Env covers torch imported later; the plugin also covers workers restarted by the nanny.
            client.register_plugin(ThreadLimitsPlugin(plan["torch_threads"]))
        return client
    if kind == "gpu":
        return _gpu_client(gpu or GpuOptions(), nwt=nwt, memory_limit=memory_limit, dash=dash, **kwargs)
    if kind == "slurm":
        return _slurm_client(slurm or SlurmOptions(), gpu=gpu, nwt=no_workers_timeout, dash=dash, **kwargs)
    if kind == "address":
        return _address_client(address, timeout=_cfg("connect-timeout", connect_timeout), **kwargs)
    raise ValueError(f"get_client: kind must be one of 'local', 'gpu', 'slurm', 'address'; found {kind!r}")


def _gpu_client(opts: GpuOptions, *, nwt: Any, memory_limit: Any, dash: str | None, **kwargs: Any) -> Client:
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError as exc:
        raise ImportError(
            "gpu cluster: dask-cuda is not installed, so kind='gpu' cannot start GPU workers. "
            f"Fix: {GPU_INSTALL_HINT} (needs an NVIDIA GPU and CUDA 12), or use kind='local'."
        ) from exc
    cuda_kwargs: dict[str, Any] = {
        "CUDA_VISIBLE_DEVICES": opts.devices,
        "rmm_pool_size": opts.rmm_pool_size,
        "enable_cudf_spill": opts.enable_cudf_spill,
        "protocol": opts.protocol,
        "dashboard_address": dash,
    }
    if opts.rmm_maximum_pool_size is not None:
        cuda_kwargs["rmm_maximum_pool_size"] = opts.rmm_maximum_pool_size
    if opts.local_directory is not None:
        cuda_kwargs["local_directory"] = opts.local_directory
    if memory_limit is not None:
        cuda_kwargs["memory_limit"] = memory_limit
    cuda_kwargs.update(opts.extra)
    cuda_kwargs.update(kwargs)
    with _scheduler_safety(nwt), _worker_process_env():
        lc = LocalCUDACluster(**cuda_kwargs)
    client = OwningClient(lc, set_as_default=True)
    if opts.torch_on_rmm or opts.cupy_on_rmm:
        client.register_plugin(RmmAllocatorPlugin(torch=opts.torch_on_rmm, cupy=opts.cupy_on_rmm))
    return client


def _slurm_client(
    opts: SlurmOptions, *, gpu: GpuOptions | None, nwt: Any, dash: str | None, **kwargs: Any
) -> Client:
    jq = _import_jobqueue()
    job_kwargs = _slurm_job_kwargs(opts, gpu)
    job_kwargs.update(kwargs)
    timeout = nwt if nwt is not None else opts.no_workers_timeout
    with _scheduler_safety(timeout):
        sc = jq.SLURMCluster(
            scheduler_options={"dashboard_address": dash, "dashboard": dash is not None},
            **job_kwargs,
        )
    if opts.max_jobs:
        sc.adapt(minimum_jobs=opts.jobs, maximum_jobs=opts.max_jobs)
    else:
        sc.scale(jobs=opts.jobs)
    client = OwningClient(sc, set_as_default=True)
    if opts.gpus_per_node > 0:
        g = gpu or GpuOptions()
        if g.torch_on_rmm or g.cupy_on_rmm:
            client.register_plugin(RmmAllocatorPlugin(torch=g.torch_on_rmm, cupy=g.cupy_on_rmm))
    return client


def _address_client(address: str | None, *, timeout: Any, **kwargs: Any) -> Client:
    if not address:
        raise ValueError(
            "get_client(kind='address'): no address given. Fix: pass address='tcp://host:8786' "
            "or the path of a scheduler JSON file (dask scheduler --scheduler-file ...)."
        )
    target = {"scheduler_file": address} if address.endswith(".json") else {"address": address}
    try:
        return Client(**target, timeout=timeout, **kwargs)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(
            f"connect to existing scheduler: could not reach {address} within {timeout} "
            f"({type(exc).__name__}: {exc}). Fix: check that the scheduler is running "
            "(`dask scheduler`), that host and port are right and reachable from this machine "
            "(firewall, --interface), or raise nemo_frames.cluster.connect-timeout."
        ) from exc


@contextlib.contextmanager
def cluster(kind: ClusterKind = "local", **kwargs: Any) -> Iterator[Client]:
    """``get_client`` as a context manager: closes the client and any cluster it started.

    Examples
    --------
    >>> with cluster("local", n_workers=1, processes=False) as client:
    ...     client.submit(sum, [1, 2]).result()
    3
    """
    client = get_client(kind, **kwargs)
    try:
        yield client
    finally:
        # Closes the cluster too when get_client started it (OwningClient); a scheduler we only
        # connected to ("address") is left running.
        client.close()


def describe_client(client: Client) -> dict[str, Any]:
    """Workers, threads, memory and GPUs behind a client, for run summaries.

    Examples
    --------
    >>> with cluster("local", n_workers=2, threads_per_worker=1, processes=False) as c:
    ...     d = describe_client(c)
    >>> (d["n_workers"], d["threads"])
    (2, 2)
    """
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    workers = []
    for addr, w in sorted(info.get("workers", {}).items()):
        gpu = w.get("gpu") or (w.get("extra") or {}).get("gpu")
        workers.append(
            {
                "address": addr,
                "name": str(w.get("name")),
                "nthreads": int(w.get("nthreads", 0)),
                "memory_limit": int(w.get("memory_limit") or 0),
                "gpu": gpu.get("name") if isinstance(gpu, dict) else None,
                "gpu_memory": int(gpu.get("memory-total", 0)) if isinstance(gpu, dict) else 0,
            }
        )
    mem = sum(w["memory_limit"] for w in workers)
    return {
        "scheduler": info.get("address"),
        "cluster": type(client.cluster).__name__ if client.cluster is not None else "external",
        "n_workers": len(workers),
        "threads": sum(w["nthreads"] for w in workers),
        "memory_bytes": mem,
        "memory": format_bytes(mem),
        "gpus": sum(1 for w in workers if w["gpu"]),
        "gpu_names": sorted({w["gpu"] for w in workers if w["gpu"]}),
        "workers": workers,
    }


def _accepts_n_workers(client: Client) -> bool:
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def wait_with_timeout(
    futures: distributed.Future | Iterable[distributed.Future],
    *,
    client: Client | None = None,
    timeout: str | float | None = None,
    no_workers_timeout: str | float | None = None,
    stage: str = "nemo_frames",
    poll_interval: float = 0.5,
) -> None:
    """Wait for futures; fail fast and clearly instead of hanging when the cluster is gone.

    The scheduler-side ``no-workers-timeout`` set by :func:`get_client` already fails tasks
    when every worker has died; this client-side guard also works against a scheduler whose
    config we do not control (``kind="address"``) and bounds the total wait.

    Raises
    ------
    ClusterLostError
        The cluster had zero workers for longer than ``no_workers_timeout`` with work pending.
    TimeoutError
        ``timeout`` passed with work still pending.

    Examples
    --------
    >>> with cluster("local", n_workers=1, processes=False) as c:
    ...     f = c.submit(sum, [1, 2])
    ...     wait_with_timeout(f, client=c, timeout="30s")
    ...     f.result()
    3
    """
    futs = [futures] if isinstance(futures, distributed.Future) else list(futures)
    if not futs:
        return
    client = client or futs[0].client
    total = parse_timedelta(timeout) if timeout is not None else None
    nwt = parse_timedelta(_cfg("no-workers-timeout", no_workers_timeout))
    start = time.monotonic()
    zero_since: float | None = None
    while True:
        try:
            distributed.wait(futs, timeout=poll_interval)
            return
        except TimeoutError:
            pending = [f for f in futs if not f.done()]
        now = time.monotonic()
        n = len(client.scheduler_info().get("workers", {}))
        if n == 0:
            zero_since = zero_since if zero_since is not None else now
            if nwt is not None and now - zero_since > nwt:
                raise ClusterLostError(
                    f"{stage}: all Dask workers are gone and {len(pending)} of {len(futs)} tasks are "
                    f"still pending after {nwt:.0f} s with zero workers (scheduler "
                    f"{client.scheduler.address}). Likely causes: workers killed for memory (lower "
                    "n_workers or raise memory_limit), Slurm jobs past their walltime (check "
                    "--lifetime), or a crash in native code (see worker logs). Fix the cause and "
                    "re-run; finished outputs are kept."
                )
        else:
            zero_since = None
        if total is not None and now - start > total:
            raise TimeoutError(
                f"{stage}: {len(pending)} of {len(futs)} tasks still pending after {total:.0f} s "
                f"on {n} workers. Raise the timeout or add workers."
            )
