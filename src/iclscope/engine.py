"""A small layer over Ray: run many model jobs on one machine or a cluster, each asking for what it needs.

    eng = Engine()                                   # an embedded local Ray (nothing to start by hand)
    eng = Engine(address="auto")                     # join the cluster `ray start --head` made (Slurm, KubeRay)
    res = eng.estimate("EleutherAI/pythia-1b", revision="step1000", dtype="float16")
    job = eng.submit(fn, arg, resources=res, writes="/shared/study/atlas-pythia-1b")
    done, _ = eng.wait([job])
    value = eng.result(job)                          # fn's return value, or an IclscopeError (one line)
    eng.cancel([job])                                # stop jobs still running (their workers are killed)
    eng.close()

Users: ``iclscope study`` (one job per model and revision) and the training lab's sweeps (one job per
stack of runs). Jobs run in Ray worker processes, one fresh process per job (``max_calls=1``: a finished job's memory,
GPU memory included, goes back to the node). A job that ``writes`` a folder first checks, on the node it
landed on, that the folder exists and can be written; on a cluster that folder must be on storage every
node shares, and the check fails with one line naming the host and the path when it is not.

Resources (``estimate_resources``). The parameter count comes from the model's config, never from its
weights: ``random:`` specs from their options, local and hub folders from config.json (an empty "meta"
model is built from the config and its parameters counted), iclscope's own models from the size of their
weight files. Then, with ``weights = parameters x bytes per parameter`` (float32 4, float16/bfloat16 2):

* no GPU in the cluster: 1 CPU and ``weights x 1.5 + 1 GiB`` of memory;
* GPUs: ``weights x 1.2 + 1 GiB`` of GPU memory is needed; if one GPU holds it the job asks for 1 GPU,
  else for ``ceil(need / GPU memory)`` GPUs of one node and loads with ``device_map="auto"``; host
  memory ``weights + 2 GiB`` (the weights pass through host memory while loading).

A job nothing in the cluster can hold is refused before it is submitted (Ray would wait for it forever).

An embedded Ray is started with ``fate_share`` (its processes die with the driver, even on SIGKILL) and
stopped by ``close()`` or at exit. No torch import at module level: the driver imports torch only to
count parameters.
"""

from __future__ import annotations

import atexit
import math
import os
import socket
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import IclscopeError
from .store import TMP_PREFIX

GIB = 1024 ** 3
BYTES_PER_PARAM = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2, "float64": 8,
                   None: 4}
CPU_OVERHEAD = 1.5        # host memory per byte of weights for a CPU job (activations, caches, copies)
GPU_OVERHEAD = 1.2        # GPU memory per byte of weights
BASE_BYTES = 1 * GIB      # Python, torch, the CUDA context
HOST_STAGING = 2 * GIB    # host memory beyond the weights for a GPU job while loading


@dataclass(frozen=True)
class Resources:
    """What one job asks the cluster for. ``device_map`` is "auto" when the model is spread over GPUs."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_bytes: int = 0
    device_map: str | None = None
    params: int | None = None
    dtype: str | None = None

    def describe(self) -> str:
        what = f"{self.num_cpus:g} CPU, {self.num_gpus:g} GPU, {self.memory_bytes / GIB:.1f} GiB"
        if self.params is not None:
            what += f" ({_count(self.params)} parameters, {self.dtype or 'float32'})"
        return what + (f", device_map={self.device_map}" if self.device_map else "")

    def to_json(self) -> dict:
        return asdict(self)

    def ray_options(self) -> dict:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_bytes:
            opts["memory"] = int(self.memory_bytes)
        return opts


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


# ------------------------------------------------------------------------------------------ estimating

from .models import count_parameters  # noqa: E402  (re-exported; family-specific code lives in models/)


def estimate_resources(spec: str, revision: str | None = None, dtype: str | None = None, *,
                       gpus_per_node: int = 0, gpu_memory_bytes: int | None = None,
                       params: int | None = None) -> Resources:
    """What a job on model ``spec`` (at ``revision``, in ``dtype``) asks for; see the module docstring.

    gpus_per_node: the most GPUs one node of the cluster has (0: CPU only); gpu_memory_bytes: one GPU's
    memory; params: the parameter count if known (else ``count_parameters``)."""
    if dtype not in BYTES_PER_PARAM:
        raise IclscopeError(f"unknown dtype {dtype!r}; choose from {', '.join(k for k in BYTES_PER_PARAM if k)}")
    n = count_parameters(spec, revision) if params is None else int(params)
    weights = n * BYTES_PER_PARAM[dtype]
    if gpus_per_node <= 0:
        return Resources(num_cpus=1, num_gpus=0, memory_bytes=int(weights * CPU_OVERHEAD + BASE_BYTES),
                         params=n, dtype=dtype)
    need = weights * GPU_OVERHEAD + BASE_BYTES
    gpu_mem = gpu_memory_bytes or 16 * GIB
    n_gpus = max(1, math.ceil(need / gpu_mem))
    if n_gpus > gpus_per_node:
        raise IclscopeError(f"{spec}: needs about {need / GIB:.0f} GiB of GPU memory ({n_gpus} GPUs of "
                            f"{gpu_mem / GIB:.0f} GiB), but no node has more than {gpus_per_node} GPUs; "
                            f"use a smaller dtype or bigger nodes")
    return Resources(num_cpus=1, num_gpus=n_gpus, memory_bytes=int(weights + HOST_STAGING),
                     device_map="auto" if n_gpus > 1 else None, params=n, dtype=dtype)


# -------------------------------------------------------------------------------------------- workers

def check_writable(folder: str | Path) -> None:
    """On this host: ``folder`` exists and a file can be created in it; else one IclscopeError line naming
    the host and the path (on a cluster: the results folder is not on storage this node shares)."""
    host = socket.gethostname()
    folder = Path(folder)
    hint = "--out must be on storage that every node of the cluster shares"
    if not folder.is_dir():
        raise IclscopeError(f"host {host} cannot write the results folder {folder}: no such folder on that host; "
                            f"{hint}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f"{TMP_PREFIX}probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise IclscopeError(f"host {host} cannot write the results folder {folder}: {e.strerror or e}; "
                            f"{hint}") from None


def _job(fn: Callable, args: tuple, kwargs: dict, writes: str | None) -> dict:
    """What runs in the worker: the storage check, then ``fn``; returns {"ok", "value"|"error", "host"}.
    Errors come back as one line (an IclscopeError's message, else the exception's type and first line)."""
    host = socket.gethostname()
    try:
        if writes is not None:
            check_writable(writes)
        return {"ok": True, "value": fn(*args, **kwargs), "host": host}
    except IclscopeError as e:
        return {"ok": False, "error": str(e).splitlines()[0] if str(e) else "IclscopeError", "host": host}
    except Exception as e:  # noqa: BLE001  a job's failure is reported, never the driver's
        first = (str(e).strip().splitlines() or [""])[0]
        return {"ok": False, "error": f"{type(e).__name__}: {first}" if first else type(e).__name__, "host": host}


class Job:
    """A submitted job: ``ref`` (the Ray object), ``name``, ``resources``."""

    def __init__(self, ref, name: str, resources: Resources):
        self.ref, self.name, self.resources = ref, name, resources

    def __repr__(self) -> str:
        return f"Job({self.name!r}, {self.resources.describe()})"


class Engine:
    """Ray, embedded (``address=None``) or joined (``address="auto"``, ``"ray://host:10001"``,
    ``"host:6379"``). ``num_cpus`` / ``num_gpus`` size an embedded Ray (default: the machine's)."""

    def __init__(self, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 temp_dir: str | None = None):
        import logging

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        # Ray 2.x warns about this on every worker; the accelerator env stays as Ray sets it
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        import ray

        self._ray = ray
        self.address = address
        self.embedded = address is None
        if ray.is_initialized():
            raise IclscopeError("Ray is already running in this process; close the other Engine first")
        kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                                      configure_logging=True)
        if self.embedded:
            # workers are started by the embedded raylet, a child of this process: they import iclscope from here
            src = str(Path(__file__).resolve().parent.parent)
            parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            if src not in parts:
                os.environ["PYTHONPATH"] = os.pathsep.join([src] + parts)
            kwargs.update(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                          object_store_memory=256 * 1024 ** 2)
            if temp_dir is not None:
                kwargs["_temp_dir"] = str(temp_dir)
        else:
            if num_cpus is not None or num_gpus is not None:
                raise IclscopeError("--num-cpus / --num-gpus size an embedded Ray; a joined cluster has its own")
            kwargs["address"] = address
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise IclscopeError(f"cannot join the Ray cluster at {address!r}: {str(e).splitlines()[0]} "
                                f"(start it with `ray start --head` first)") from None
        self._watchdog = _start_watchdog(ray.get_runtime_context().get_node_id()) if self.embedded else None
        atexit.register(self.close)
        self._gpu_memory: int | None = None
        self._remote = None

    # ---------------------------------------------------------------------------------------- cluster
    def nodes(self) -> list[dict]:
        """The alive nodes' resources: [{"host", "CPU", "GPU", "memory"}]."""
        out = []
        for n in self._ray.nodes():
            if n.get("Alive"):
                r = n.get("Resources", {})
                out.append({"host": n.get("NodeManagerHostname") or n.get("NodeManagerAddress"),
                            "CPU": r.get("CPU", 0), "GPU": r.get("GPU", 0), "memory": r.get("memory", 0)})
        return out

    def gpus_per_node(self) -> int:
        return int(max((n["GPU"] for n in self.nodes()), default=0))

    def gpu_memory(self) -> int | None:
        """One GPU's memory in bytes, measured once on a GPU node (None without GPUs)."""
        if self._gpu_memory is None and self.gpus_per_node() > 0:
            probe = self._ray.remote(num_gpus=1, num_cpus=0)(_gpu_memory_probe)
            self._gpu_memory = int(self._ray.get(probe.remote()))
        return self._gpu_memory

    def estimate(self, spec: str, revision: str | None = None, dtype: str | None = None) -> Resources:
        """``estimate_resources`` for this cluster, checked against what its biggest node has."""
        gpus = self.gpus_per_node()
        res = estimate_resources(spec, revision, dtype, gpus_per_node=gpus,
                                 gpu_memory_bytes=self.gpu_memory() if gpus else None)
        self.check_feasible(res, spec)
        return res

    def check_feasible(self, res: Resources, what: str) -> None:
        """IclscopeError (one line) when no node has the CPUs, GPUs and memory ``res`` asks for."""
        nodes = self.nodes()
        if any(n["CPU"] >= res.num_cpus and n["GPU"] >= res.num_gpus and n["memory"] >= res.memory_bytes
               for n in nodes):
            return
        most = max(nodes, key=lambda n: n["memory"], default={"memory": 0, "CPU": 0, "GPU": 0})
        raise IclscopeError(f"{what}: asks for {res.describe()}, but no node of the cluster has that (the biggest "
                            f"has {most['CPU']:g} CPU, {most['GPU']:g} GPU, {most['memory'] / GIB:.1f} GiB)")

    # ------------------------------------------------------------------------------------------- jobs
    def submit(self, fn: Callable, *args, resources: Resources = Resources(), name: str | None = None,
               writes: str | Path | None = None, **kwargs) -> Job:
        """Run ``fn(*args, **kwargs)`` in a fresh worker process with ``resources``; ``writes``: the results
        folder the job writes (checked on the worker first). Returns a Job for ``wait`` / ``result``."""
        name = name or getattr(fn, "__name__", "job")
        if self._remote is None:
            self._remote = self._ray.remote(max_calls=1, max_retries=0)(_job)
        remote = self._remote.options(name=name, **resources.ray_options())
        ref = remote.remote(fn, args, kwargs, None if writes is None else str(writes))
        return Job(ref, name, resources)

    def wait(self, jobs: Sequence[Job], timeout: float | None = None) -> tuple[list[Job], list[Job]]:
        """(ended, running): at least one ended job unless ``timeout`` seconds pass first."""
        if not jobs:
            return [], []
        by_ref = {j.ref: j for j in jobs}
        ready, rest = self._ray.wait(list(by_ref), num_returns=1, timeout=timeout)
        return [by_ref[r] for r in ready], [by_ref[r] for r in rest]

    def outcome(self, job: Job) -> dict:
        """{"ok": True, "value", "host"} or {"ok": False, "error" (one line), "host"} of an ended job; a worker
        that died (killed, out of memory) is an error too."""
        try:
            return self._ray.get(job.ref)
        except Exception as e:  # noqa: BLE001  RayTaskError, WorkerCrashedError, OutOfMemoryError, ...
            import re

            cause = getattr(e, "cause", None) or e
            lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(cause)).strip().splitlines()
                     if ln.strip() and not ln.startswith(("ray::", "Traceback", "  "))]
            e, first = cause, (lines[-1] if lines else "")
            return {"ok": False, "error": f"the worker of {job.name} died: {type(e).__name__}: {first}"[:400],
                    "host": None}

    def result(self, job: Job) -> Any:
        """The job's return value; its failure as an IclscopeError (one line)."""
        out = self.outcome(job)
        if not out["ok"]:
            raise IclscopeError(f"{job.name}: {out['error']}")
        return out["value"]

    def cancel(self, jobs: Sequence[Job]) -> None:
        """Stop ``jobs`` now (their worker processes are killed; a job that already ended is left as it is)."""
        for job in jobs:
            try:
                self._ray.cancel(job.ref, force=True)
            except Exception:  # noqa: BLE001  already ended, or Ray already shut down
                pass

    def close(self) -> None:
        """Stop an embedded Ray (disconnect from a joined one). Idempotent."""
        try:
            if self._ray.is_initialized():
                self._ray.shutdown()
        except Exception:  # pragma: no cover  (at interpreter exit)
            pass
        dog, self._watchdog = getattr(self, "_watchdog", None), None
        if dog is not None and dog.poll() is None:
            dog.kill()
            dog.wait()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------------- watchdog

def _proc_table() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, start time)} of every process (Linux /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out[int(d)] = (int(fields[1]), fields[19])
            except (OSError, IndexError, ValueError):
                pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def _watch(driver: int, interval: float = 0.5, node_id: str = "") -> None:
    """Run in a separate process: remember every descendant of ``driver`` (the embedded Ray's GCS, raylet,
    agents and workers) while it lives; once it is gone, SIGKILL them all, in several passes: a worker that
    Ray was starting at that instant (or that was reparented once its parent died) is found by the node id
    on its command line. Ray's own agents would otherwise linger for a minute or more after a SIGKILLed
    driver."""
    import signal
    import time

    known: dict[int, str] = {}
    table = _proc_table()
    start = table.get(driver, (0, ""))[1]
    while True:
        table = _proc_table()
        alive = driver in table and table[driver][1] == start
        roots = {driver} | set(known)
        for pid, (ppid, st) in table.items():      # descendants, to any depth
            if ppid in roots and pid != os.getpid():
                known.setdefault(pid, st)
        changed = True
        while changed:
            changed = False
            for pid, (ppid, st) in table.items():
                if ppid in known and pid not in known and pid != os.getpid():
                    known[pid] = st
                    changed = True
        if not alive:
            me = os.getpid()
            for _ in range(12):  # about 3 s of passes
                for pid, st in known.items():
                    if table.get(pid, (0, None))[1] == st:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                time.sleep(0.25)
                table = _proc_table()
                for pid, (ppid, st) in table.items():
                    if pid != me and pid not in known and (ppid in known or (node_id and node_id in _cmdline(pid))):
                        known[pid] = st
            return
        known = {p: st for p, st in known.items() if table.get(p, (0, None))[1] == st}
        time.sleep(interval)


def _start_watchdog(node_id: str = ""):
    """A process that kills the embedded Ray (node ``node_id``) when this driver dies (Linux only; None
    elsewhere)."""
    import subprocess
    import sys

    if not os.path.isdir("/proc/self"):
        return None
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r}); " \
           f"from iclscope.engine import _watch; _watch({os.getpid()}, node_id={node_id!r})"
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _gpu_memory_probe() -> int:
    import torch
    return int(torch.cuda.get_device_properties(0).total_memory)
