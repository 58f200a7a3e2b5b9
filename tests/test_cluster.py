"""Tests for nemo_frames.cluster: sizing, worker env, Slurm scripts, error paths, dead-cluster guard."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time

import dask
import pytest
from dask.utils import parse_bytes
from distributed.scheduler import KilledWorker

from nemo_frames.cluster import (
    GPU_INSTALL_HINT,
    ClusterError,
    ClusterLostError,
    GpuOptions,
    SlurmOptions,
    ThreadLimitsPlugin,
    cluster,
    describe_client,
    get_client,
    plan_local,
    slurm_job_script,
    wait_with_timeout,
)

GiB = 2**30
needs_jobqueue = pytest.mark.skipif(
    importlib.util.find_spec("dask_jobqueue") is None, reason="dask-jobqueue not installed (pip install 'nemo-frames[slurm]')"
)


# ----------------------------------------------------------------------------- sizing (no processes)


def test_plan_defaults_one_thread_per_worker_and_all_cpus():
    plan = plan_local(cpus=16, memory_bytes=64 * GiB)
    assert plan == {"n_workers": 16, "threads_per_worker": 1, "memory_limit": 4 * GiB, "torch_threads": 1}


def test_plan_caps_workers_by_model_memory():
    # 4 GB model may use half a worker -> 8 GiB per worker -> 32 GiB fits 4 workers.
    plan = plan_local(model_memory_gb=4, cpus=16, memory_bytes=32 * GiB)
    assert plan["n_workers"] == 4
    assert plan["memory_limit"] == 8 * GiB
    assert plan["torch_threads"] == 4  # the CPUs not used by extra workers go to torch


def test_plan_model_too_large_names_the_fix():
    with pytest.raises(ClusterError, match=r"needs .* per worker.*smaller model"):
        plan_local(model_memory_gb=40, cpus=8, memory_bytes=16 * GiB)


def test_plan_explicit_argument_beats_config_beats_auto():
    with dask.config.set(
        {"nemo_frames.cluster.n-workers": 3, "nemo_frames.cluster.threads-per-worker": 2,
         "nemo_frames.cluster.memory-limit": "2GiB"}
    ):
        from_config = plan_local(cpus=16, memory_bytes=64 * GiB)
        explicit = plan_local(n_workers=5, threads_per_worker=1, memory_limit="1GiB", cpus=16, memory_bytes=64 * GiB)
    assert (from_config["n_workers"], from_config["threads_per_worker"], from_config["memory_limit"]) == (3, 2, 2 * GiB)
    assert (explicit["n_workers"], explicit["threads_per_worker"], explicit["memory_limit"]) == (5, 1, GiB)


def test_plan_warns_when_explicit_workers_exceed_model_memory():
    with pytest.warns(UserWarning) as record:
        plan = plan_local(n_workers=6, model_memory_gb=4, cpus=8, memory_bytes=16 * GiB)
    messages = " | ".join(str(w.message) for w in record)
    assert "at most 2 workers fit" in messages and "less than 50% for a 4 GB model" in messages
    assert plan["n_workers"] == 6


def test_plan_uses_real_machine_when_not_given():
    plan = plan_local()
    assert 1 <= plan["n_workers"] <= (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


def test_unknown_kind_rejected():
    with pytest.raises(ValueError, match="kind must be one of"):
        get_client("kubernetes")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- a real local cluster


def _worker_env():
    return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def _torch_threads():
    import torch

    return torch.get_num_threads()


@pytest.fixture(scope="module")
def local_client():
    # config says 1 worker; the explicit argument (2) must win
    with dask.config.set({"nemo_frames.cluster.n-workers": 1}), cluster(
        "local", n_workers=2, threads_per_worker=1, memory_limit="1GiB", torch_threads=2
    ) as client:
        client.wait_for_workers(2, timeout=60)
        yield client


def test_local_client_sizing_as_requested(local_client):
    d = describe_client(local_client)
    assert d["cluster"] == "LocalCluster"
    assert d["n_workers"] == 2
    assert d["threads"] == 2
    assert all(w["memory_limit"] == parse_bytes("1GiB") for w in d["workers"])
    assert d["memory_bytes"] == 2 * parse_bytes("1GiB")
    assert d["gpus"] == 0


def test_local_workers_get_thread_env(local_client):
    envs = local_client.run(_worker_env)
    assert len(envs) == 2
    for env in envs.values():
        # 2, not distributed's pre-spawn default of 1
        assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}


def _malloc_env():
    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")}


def test_local_workers_get_malloc_env(local_client):
    # Not Dask's MALLOC_TRIM_THRESHOLD_=65536, which pins the mmap threshold at 128 KiB (see worker_malloc_env).
    for env in local_client.run(_malloc_env).values():
        assert env == {"MALLOC_TRIM_THRESHOLD_": str(64 * 2**20), "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20)}


def test_malloc_env_null_config_keeps_dask_default(local_client):
    # local_client has started before, so its nanny has copied 64 MiB into this process's environment:
    # that copy must not count as the user's own setting.
    with dask.config.set({"nemo_frames.cluster.malloc-trim-threshold": None,
                          "nemo_frames.cluster.malloc-mmap-threshold": None}):
        with cluster("local", n_workers=1, threads_per_worker=1) as client:
            (env,) = client.run(_malloc_env).values()
    assert env == {"MALLOC_TRIM_THRESHOLD_": "65536", "MALLOC_MMAP_THRESHOLD_": None}
    with dask.config.set({"nemo_frames.cluster.malloc-trim-threshold": "8MiB"}):
        with cluster("local", n_workers=1, threads_per_worker=1) as client:
            (env,) = client.run(_malloc_env).values()
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(8 * 2**20)


def _profile_history(dask_worker):
    return dask_worker.profile_history.maxlen, dask_worker.profile_keys_history.maxlen


def test_worker_profile_history_is_capped_and_null_keeps_dask_default(local_client):
    # One profile tree a second for 1,000 s made a long run's workers ~0.25 GB bigger than a short run's.
    for maxlen in local_client.run(_profile_history).values():
        assert maxlen == (120, 120)
    with dask.config.set({"nemo_frames.cluster.profile-history": None}):
        with cluster("local", n_workers=1, threads_per_worker=1) as client:
            (maxlen,) = client.run(_profile_history).values()
    assert maxlen == (1000, 1000)


def test_with_get_client_closes_its_cluster_and_workers():
    with get_client("local", n_workers=1, threads_per_worker=1) as client:
        lc = client.cluster
        (pid,) = client.run(os.getpid).values()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker process {pid} still alive 30 s after the with-block closed its client")
    assert lc.status.name == "closed"


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_local_workers_torch_threads(local_client):
    # torch imported lazily inside a task reads OMP_NUM_THREADS set for the worker
    assert set(local_client.run(_torch_threads).values()) == {2}
    # the plugin re-applies torch.set_num_threads once torch is loaded
    local_client.register_plugin(ThreadLimitsPlugin(1), name="nf-threads-test")
    assert set(local_client.run(_torch_threads).values()) == {1}


def _status(client) -> tuple[int, bytes]:
    """HTTP status and body of the scheduler's /status page."""
    import urllib.error
    import urllib.request

    port = client.scheduler_info()["services"]["dashboard"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_dashboard_off_by_default_on_when_asked(local_client):
    code, body = _status(local_client)
    # Without bokeh, a scheduler started with the dashboard on adds distributed's "needs bokeh"
    # page to a process-wide route list, so a later scheduler may serve that page: still no dashboard.
    assert code == 404 or b"needs bokeh" in body
    with cluster("local", n_workers=1, processes=False, dashboard=True) as client:
        assert _status(client)[0] == 200


# ----------------------------------------------------------------------------- dead workers


def _exit_hard(_):
    os._exit(1)


def _slow(x):
    time.sleep(2)
    return x


def _leave_now(dask_worker):
    # what distributed.chaos.KillWorker(mode="sys.exit") does: the worker leaves and is not restarted
    dask_worker.loop.asyncio_loop.call_later(0.05, sys.exit, 0)


def test_poison_task_fails_after_allowed_failures():
    with dask.config.set({"nemo_frames.cluster.allowed-failures": 1}), cluster(
        "local", n_workers=1, threads_per_worker=1, memory_limit="1GiB"
    ) as client:
        assert client.cluster.scheduler.allowed_failures == 1
        start = time.monotonic()
        with pytest.raises(KilledWorker, match="workers died"):
            client.submit(_exit_hard, 0).result(timeout=60)
        assert time.monotonic() - start < 60


def test_all_workers_gone_fails_within_timeout_not_hang():
    from distributed.scheduler import NoWorkerError

    with cluster("local", n_workers=2, threads_per_worker=1, memory_limit="1GiB", no_workers_timeout="3s") as client:
        client.wait_for_workers(2, timeout=60)
        futs = client.map(_slow, range(4))
        time.sleep(0.5)
        client.run(_leave_now)
        start = time.monotonic()
        with pytest.raises(NoWorkerError, match="without any running workers"):
            client.gather(futs)
        assert time.monotonic() - start < 45


def test_wait_with_timeout_client_side_guard():
    # scheduler-side guard off (as on a scheduler we do not configure): the client guard must fire
    with dask.config.set({"nemo_frames.cluster.no-workers-timeout": None}), cluster(
        "local", n_workers=1, threads_per_worker=1, memory_limit="1GiB"
    ) as client:
        client.wait_for_workers(1, timeout=60)
        assert client.cluster.scheduler.no_workers_timeout is None
        futs = client.map(_slow, range(3))
        time.sleep(0.5)
        client.run(_leave_now)
        start = time.monotonic()
        with pytest.raises(ClusterLostError, match=r"score_clip: all Dask workers are gone"):
            wait_with_timeout(futs, client=client, no_workers_timeout="2s", stage="score_clip")
        assert time.monotonic() - start < 30


def test_wait_with_timeout_total_timeout_and_success():
    with cluster("local", n_workers=1, threads_per_worker=1, processes=False) as client:
        f = client.submit(sum, [1, 2])
        wait_with_timeout(f, client=client, timeout="30s")
        assert f.result() == 3
        slow = client.submit(time.sleep, 3)
        with pytest.raises(TimeoutError, match="still pending"):
            wait_with_timeout(slow, client=client, timeout=0.5)


# ----------------------------------------------------------------------------- address


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_address_unreachable_error_is_clear():
    addr = f"tcp://127.0.0.1:{_free_port()}"
    start = time.monotonic()
    with pytest.raises(ClusterError) as info:
        get_client("address", address=addr, connect_timeout="1s")
    msg = str(info.value)
    assert msg.startswith("connect to existing scheduler")
    assert addr in msg and "dask scheduler" in msg
    assert time.monotonic() - start < 20


def test_address_missing_is_clear():
    with pytest.raises(ValueError, match="no address given"):
        get_client("address")


def test_address_connects_to_running_scheduler():
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as lc, cluster(
        "address", address=lc.scheduler_address
    ) as client:
        assert describe_client(client)["cluster"] == "external"
        assert client.submit(sum, [2, 3]).result() == 5
    # the context manager must not have shut down a scheduler it did not start
        assert lc.scheduler.status.name == "running"


# ----------------------------------------------------------------------------- slurm


def _sbatch(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


@needs_jobqueue
def test_slurm_gpu_job_script():
    opts = SlurmOptions(
        gpus_per_node=8, cores_per_worker=2, memory_per_worker="24GiB", walltime="04:00:00",
        account="proj123", partition="gpu", qos="high", local_directory="/scratch/$SLURM_JOB_ID",
        prologue=["module load cuda/12.4", "source /opt/venv/bin/activate"], python="/opt/venv/bin/python",
    )
    script = slurm_job_script(opts, gpu=GpuOptions(rmm_pool_size="70GB"))
    sb = _sbatch(script)
    assert "#SBATCH -A proj123" in sb
    assert "#SBATCH -p gpu" in sb
    assert "#SBATCH -t 04:00:00" in sb
    assert "#SBATCH --gres=gpu:8" in sb
    assert "#SBATCH --qos=high" in sb
    assert "#SBATCH --cpus-per-task=16" in sb  # whole node: 8 workers x 2 cores
    assert "#SBATCH --mem=192G" in sb  # 8 x 24 GiB
    cmd = script.strip().splitlines()[-1]
    assert cmd.startswith("/opt/venv/bin/python -m dask_cuda.cli tcp://")
    # per-GPU worker values (dask_cuda.cli repeats them for each GPU)
    assert "--nthreads 2 " in cmd and "--memory-limit 24.00GiB" in cmd
    assert "--local-directory /scratch/$SLURM_JOB_ID" in cmd
    assert "--lifetime 224m --lifetime-stagger 4m" in cmd  # 240 - 4 stagger - 12 margin
    assert "--lifetime-restart" not in cmd
    assert "--rmm-pool-size 70GB" in cmd and "--enable-cudf-spill" in cmd
    assert "jit" not in cmd and "--nworkers" not in cmd
    # the worker's nanny takes an exported variable over its config: our malloc settings reach it
    assert f"export MALLOC_TRIM_THRESHOLD_={64 * 2**20}" in script
    assert script.index("export MALLOC_TRIM_THRESHOLD_") < script.index("python -m dask_cuda.cli")
    prologue_at = script.index("module load cuda/12.4")
    assert script.index("source /opt/venv/bin/activate") > prologue_at
    assert script.index("python -m dask_cuda.cli") > prologue_at


@needs_jobqueue
def test_slurm_cpu_job_script():
    opts = SlurmOptions(workers_per_node=4, cores_per_worker=4, memory_per_worker="8GiB", walltime="1-00:00:00",
                        lifetime_restart=True)
    script = slurm_job_script(opts)
    sb = _sbatch(script)
    assert "#SBATCH --cpus-per-task=16" in sb and "#SBATCH --mem=32G" in sb
    assert not any("gres" in line for line in sb)
    cmd = script.strip().splitlines()[-1]
    assert cmd.startswith(f"{sys.executable} -m distributed.cli.dask_worker ")
    assert "--nworkers 4" in cmd and "--nthreads 4 " in cmd and "--nanny" in cmd
    assert "--local-directory ${TMPDIR:-/tmp}" in cmd
    # 1440 min - 4 stagger - 72 (5 %) margin
    assert "--lifetime 1364m --lifetime-stagger 4m --lifetime-restart" in cmd


@needs_jobqueue
def test_slurm_explicit_lifetime_and_short_walltime():
    assert "--lifetime 20m " in slurm_job_script(SlurmOptions(walltime="00:30:00", lifetime="20m"))
    with pytest.raises(ValueError, match="walltime 00:08:00 is too short"):
        slurm_job_script(SlurmOptions(walltime="00:08:00"))


@pytest.mark.slow
@needs_jobqueue
def test_slurm_cluster_object_builds_same_script():
    # SLURMCluster starts a local scheduler but submits nothing until scale(); use its job_script.
    from dask_jobqueue import SLURMCluster

    from nemo_frames.cluster import _slurm_job_kwargs

    opts = SlurmOptions(gpus_per_node=4, partition="gpu")
    with SLURMCluster(**_slurm_job_kwargs(opts, None), scheduler_options={"dashboard_address": None}) as sc:
        real = sc.job_script()
    assert _sbatch(real) == _sbatch(slurm_job_script(opts))


# ----------------------------------------------------------------------------- gpu


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is not None, reason="dask_cuda installed")
def test_gpu_without_dask_cuda_names_install_hint():
    with pytest.raises(ImportError) as info:
        get_client("gpu")
    assert GPU_INSTALL_HINT in str(info.value)


@pytest.mark.gpu
def test_gpu_cluster_one_worker_per_gpu():
    pytest.importorskip("dask_cuda")
    pytest.importorskip("rmm", reason="RAPIDS rmm not installed: the RMM pool (GpuOptions.rmm_pool_size) needs it")
    import dask_cuda.utils

    n_gpus = dask_cuda.utils.get_n_gpus()
    with cluster("gpu", gpu=GpuOptions(rmm_pool_size=0.5)) as client:
        client.wait_for_workers(n_gpus, timeout=120)
        d = describe_client(client)
        assert d["n_workers"] == n_gpus
        assert d["gpus"] == n_gpus

        def _torch_allocator():
            import torch

            x = torch.ones(1024, device="cuda")
            return torch.cuda.memory.get_allocator_backend(), float(x.sum())

        assert all(v[1] == 1024.0 for v in client.run(_torch_allocator).values())


# ----------------------------------------------------------------------------- option names checked up front


def test_get_client_option_typo_raises_before_starting_anything():
    from nemo_frames.cluster import ClusterOptionError

    with pytest.raises(ClusterOptionError, match=r"get_client\.lifetme: unknown option .*did you mean 'lifetime'"):
        get_client("local", n_workers=1, lifetme="1h")
    with pytest.raises(ClusterOptionError, match=r"get_client\.slurm\.wallltime: .*did you mean 'walltime'"):
        get_client("slurm", slurm={"wallltime": "01:00:00"})
    # a Worker-only keyword really reaches the worker (the name set is what distributed accepts)
    with get_client("local", n_workers=1, processes=False, resources={"widgets": 2}) as client:
        info = client.scheduler_info()["workers"]
        assert [w["resources"] for w in info.values()] == [{"widgets": 2}]


@pytest.mark.skipif(importlib.util.find_spec("dask_cuda") is not None, reason="dask_cuda installed")
def test_gpu_options_read_from_dask_cuda_source_without_importing_it(tmp_path, monkeypatch):
    """LocalCUDACluster's parameters come from parsing its file: importing dask_cuda initialises CUDA."""
    from nemo_frames.cluster import ClusterOptionError, check_cluster_options

    pkg = tmp_path / "dask_cuda"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise ImportError('importing dask_cuda would initialise CUDA')\n")
    (pkg / "local_cuda_cluster.py").write_text(
        "from distributed import LocalCluster\n\n\nclass LocalCUDACluster(LocalCluster):\n"
        "    def __init__(self, CUDA_VISIBLE_DEVICES=None, n_workers=None, rmm_pool_size=None,\n"
        "                 enable_cudf_spill=False, *, jit_unspill=None, **kwargs):\n"
        "        super().__init__(n_workers=n_workers, **kwargs)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    check_cluster_options("gpu", {"rmm_pool_size": 0.5, "jit_unspill": True, "lifetime": "1h"})
    with pytest.raises(ClusterOptionError, match=r"rmm_pool_sise: .*kind 'gpu' \(did you mean 'rmm_pool_size'\?\)"):
        check_cluster_options("gpu", {"rmm_pool_sise": 0.5})
    assert "dask_cuda" not in sys.modules


@pytest.mark.gpu
def test_gpu_cluster_without_rapids():
    # What a GPU machine without RAPIDS can run (the lent machines): LocalCUDACluster with no RMM pool,
    # no cuDF spilling, torch on its own allocator.
    pytest.importorskip("dask_cuda")
    opts = GpuOptions(devices="0", rmm_pool_size=None, enable_cudf_spill=False, torch_on_rmm=False, cupy_on_rmm=False)
    with cluster("gpu", gpu=opts) as client:
        client.wait_for_workers(1, timeout=120)
        assert describe_client(client)["n_workers"] == 1

        def _on_gpu():
            import os

            import torch

            return os.environ.get("CUDA_VISIBLE_DEVICES"), float(torch.ones(1024, device="cuda").sum())

        assert list(client.run(_on_gpu).values()) == [("0", 1024.0)]
