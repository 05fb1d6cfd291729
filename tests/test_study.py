"""``iclscope study``: the study file's schema, resource estimates, the Ray engine (storage check, no process
left behind), and a whole study of small random models on a local Ray of 2 CPUs: one model with three
revisions in a local Hugging Face cache, one bad spec; killed mid-study and resumed without recomputing a
finished job."""

import hashlib
import json
import operator
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import iclscope
from iclscope import IclscopeError
from iclscope.engine import GIB, Engine, Resources, check_writable, count_parameters, estimate_resources
from iclscope.schema.study import load_study, validate_study

SRC = str(Path(iclscope.__file__).resolve().parent.parent)
REPO = "iclscope-test/llama-tiny"
REVS = {"step1": 1, "step2": 2, "step4": 4}
SPEC = "random:llama:layers=2,heads=4,d_model=32,seed={}"

STUDY = f"""
[[model]]
spec = "random:gpt2:layers=2,heads=4,d_model=32"
label = "gpt2"

[[model]]
spec = "{REPO}"
revisions = ["step1", "step2", "step4"]
label = "llama"

[[model]]
spec = "random:nosuchfamily"
label = "bad"

[protocol]
k = 2
n_clean = 4
n_corrupt = 2
n_eval = 4
fractions = [0.0, 0.5]
random_seeds = 1
"""


# ---------------------------------------------------------------------------------------------- schema

def test_study_schema_defaults_and_one_line_errors():
    s = validate_study({"model": [{"spec": "EleutherAI/pythia-70m", "revisions": ["step1", "step143000"]}]})
    assert s.models[0].name == "pythia-70m" and s.protocol.n_clean == 100 and s.protocol.how == "mean"
    assert s.atlas_kwargs()["fractions"][-1] == 0.2 and s.tasks.folders == []
    cases = [
        ({"model": [{"spec": "gpt2", "revison": ["a"]}]}, r"unknown study key model\[0\]\.revison; did you mean model\[0\]\.revisions\?"),
        ({"model": [{"spec": "gpt2"}], "protocl": {}}, "unknown study key protocl; did you mean protocol?"),
        ({"model": [{"spec": "gpt2"}], "protocol": {"n_clen": 3}}, "did you mean protocol.n_clean?"),
        ({"model": [{"spec": "gpt2"}], "protocol": {"how": "max"}}, "protocol.how = \"max\": expected \"mean\" or \"zero\""),
        ({"model": [{"spec": "gpt2"}], "protocol": {"fractions": [0.1, 2]}}, "protocol.fractions = .*fractions in"),
        ({"model": [{"spec": "gpt2"}], "protocol": {"n_eval": 0}}, "protocol.n_eval = 0"),
        ({"model": [{"spec": "random:gpt2", "revisions": ["a"]}]}, "a random: model has no revisions"),
        ({"model": [{"spec": "a/m"}, {"spec": "b/m"}]}, r"model\[1\].label = \"m\": model\[0\] has the same label"),
        ({"model": [{"spec": "gpt2", "dtype": "int3"}]}, r"model\[0\].dtype = \"int3\": expected one of float32"),
        ({"tasks": {"folders": ["x"], "score": ["a"]}, "model": [{"spec": "gpt2"}]}, "go together"),
        ({}, "no \\[\\[model\\]\\]"),
    ]
    for raw, msg in cases:
        with pytest.raises(IclscopeError, match=msg) as e:
            validate_study(raw)
        assert "\n" not in str(e.value)


def test_bad_study_file_is_refused_before_anything_is_written(tmp_path):
    from iclscope.experiments.study import run_study

    f = tmp_path / "s.toml"
    f.write_text('[[model]]\nspec = "gpt2"\n[tasks]\nfolders = ["/no/such/tasks"]\n')
    with pytest.raises(IclscopeError, match="tasks.folders: /no/such/tasks: no such folder"):
        run_study(f, tmp_path / "out", log=lambda *a: None)
    assert not (tmp_path / "out").exists()
    import argparse

    from iclscope.experiments.study import add_study_parser, cmd_study
    parser = argparse.ArgumentParser()
    add_study_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["study", str(f), "--out", str(tmp_path / "out"), "--num-cpus", "2"])
    assert args.fn is cmd_study and args.num_cpus == 2 and args.address is None
    with pytest.raises(IclscopeError, match="no such folder"):
        cmd_study(args)
    f.write_text("[[model]\n")
    with pytest.raises(IclscopeError, match="not valid TOML"):
        load_study(f)


# ------------------------------------------------------------------------------------------- resources

def test_parameter_count_from_the_config_without_weights(tmp_path):
    spec = "random:llama:layers=2,heads=4,d_model=32,seed=3"
    m = iclscope.load(spec)
    n = sum(p.numel() for p in m.module.parameters())
    assert count_parameters(spec) == n
    m.module.save_pretrained(tmp_path / "folder")
    assert count_parameters(str(tmp_path / "folder")) == n
    with pytest.raises(IclscopeError, match="unknown family"):
        count_parameters("random:nosuchfamily")
    with pytest.raises(IclscopeError, match="no such folder"):
        count_parameters("./no/such/model")


def test_resource_estimates():
    # CPU only: weights x 1.5 + 1 GiB of memory, 1 CPU
    r = estimate_resources("x", params=1_000_000_000, dtype="float16")
    assert (r.num_cpus, r.num_gpus, r.device_map) == (1, 0, None)
    assert r.memory_bytes == int(2e9 * 1.5 + GIB)
    assert estimate_resources("x", params=10**9).memory_bytes == int(4e9 * 1.5 + GIB)   # float32 by default
    # one 80 GiB GPU holds a 7B model in float16 (14 GB x 1.2 + 1 GiB)
    r = estimate_resources("x", params=7 * 10**9, dtype="bfloat16", gpus_per_node=8, gpu_memory_bytes=80 * GIB)
    assert (r.num_gpus, r.device_map) == (1, None) and r.memory_bytes == int(14e9 + 2 * GIB)
    # a 16 GiB GPU does not: ceil((14e9 * 1.2 + 1 GiB) / 16 GiB) = 2 GPUs, spread with device_map auto
    r = estimate_resources("x", params=7 * 10**9, dtype="float16", gpus_per_node=8, gpu_memory_bytes=16 * GIB)
    assert (r.num_gpus, r.device_map) == (2, "auto")
    with pytest.raises(IclscopeError, match="no node has more than 1 GPUs"):
        estimate_resources("x", params=7 * 10**9, gpus_per_node=1, gpu_memory_bytes=16 * GIB)
    with pytest.raises(IclscopeError, match="unknown dtype 'int3'"):
        estimate_resources("x", params=1, dtype="int3")
    assert "(1B parameters, float32)" in estimate_resources("x", params=10**9).describe()


# ------------------------------------------------------------------------------------------------ engine

def test_storage_check_names_host_and_path(tmp_path):
    import socket

    check_writable(tmp_path)
    host = socket.gethostname()
    with pytest.raises(IclscopeError, match=f"host {host} cannot write the results folder {tmp_path}/gone: no such "
                                            f"folder on that host; --out must be on storage"):
        check_writable(tmp_path / "gone")
    with pytest.raises(IclscopeError, match=f"host {host} cannot write the results folder /proc: "):
        check_writable("/proc")  # a folder nobody can create files in, root included


def test_engine_runs_jobs_in_workers_and_checks_storage_there(tmp_path):
    with Engine(num_cpus=2) as eng:
        ok = eng.submit(operator.mul, 21, 2, resources=Resources(num_cpus=1, memory_bytes=GIB // 4), writes=tmp_path)
        bad = eng.submit(operator.mul, 1, 2, resources=Resources(num_cpus=1), writes=tmp_path / "not-shared", name="atlas-x")
        ro = eng.submit(operator.mul, 1, 2, resources=Resources(num_cpus=1), writes="/proc")
        assert eng.result(ok) == 42
        out = eng.outcome(bad)
        assert not out["ok"] and out["error"].startswith(f"host {out['host']} cannot write the results folder "
                                                         f"{tmp_path}/not-shared: no such folder")
        with pytest.raises(IclscopeError, match="cannot write the results folder /proc"):
            eng.result(ro)
        with pytest.raises(IclscopeError, match="asks for 1 CPU, 0 GPU, 100000.0 GiB.*no node of the cluster"):
            eng.check_feasible(Resources(memory_bytes=100000 * GIB), "huge")
        assert eng.estimate("random:gpt2:layers=2,heads=4,d_model=32").num_gpus == 0
    assert not __import__("ray").is_initialized()


# ------------------------------------------------------------------------------------------------- study

def _snapshot(cache: Path, rev: str, seed: int) -> None:
    """One revision as the hub client lays it out: refs/<rev> -> hash, snapshots/<hash>/files."""
    repo = cache / f"models--{REPO.replace('/', '--')}"
    commit = f"{seed:040x}"
    iclscope.load(SPEC.format(seed)).module.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / rev).write_text(commit)


DRIVER = textwrap.dedent("""
    import sys
    from iclscope.experiments.study import run_study
    rec = run_study(sys.argv[1], sys.argv[2], num_cpus=2)
    sys.exit(0 if all(r["status"] == "finished" for r in rec["jobs"]) else 1)
""")


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            if k not in out:
                out.add(k)
                todo.append(k)
    return out


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".iclscope.lock"}


def test_study_on_local_ray_resumes_after_a_kill(tmp_path):
    home = tmp_path / "hf"
    for rev, seed in REVS.items():
        _snapshot(home / "hub", rev, seed)
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    # each revision in the local cache loads, and is the model saved under it
    check = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import torch, iclscope
        from iclscope.models.hf import load_pretrained
        for rev, seed in {REVS!r}.items():
            m = load_pretrained({REPO!r}, revision=rev)
            ref = iclscope.load({SPEC!r}.format(seed))
            assert all(torch.equal(a, b) for a, b in zip(m.module.state_dict().values(), ref.module.state_dict().values())), rev
        print("ok")""")], env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "ok", check.stderr[-2000:]

    study, out = tmp_path / "study.toml", tmp_path / "out"
    study.write_text(STUDY)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    t0 = time.time()
    # run 1: SIGKILL the driver once a job has finished and others have not
    p = subprocess.Popen([sys.executable, str(driver), str(study), str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tree: set[int] = set()
    state = None
    while time.time() - t0 < 150 and p.poll() is None:
        tree |= _descendants(p.pid)
        try:
            state = json.loads((out / "study.json").read_text())
        except (OSError, ValueError):
            state = None
        if state and state["counts"]["finished"] >= 1 and state["counts"]["running"] >= 1:
            break
        time.sleep(0.3)
    assert p.poll() is None, p.stdout.read()[-3000:]
    tree |= _descendants(p.pid)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    # the embedded Ray (GCS, raylet, agents, workers) goes with the driver
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(q) for q in tree):
        time.sleep(0.5)
    assert not [q for q in tree if _alive(q)], [open(f"/proc/{q}/cmdline").read() for q in tree if _alive(q)]
    done_first = [j["id"] for j in state["jobs"] if j["status"] == "finished"]
    assert done_first and all((out / j / ".iclscope-finished.json").exists() for j in done_first)
    before = {j: _fingerprint(out / j) for j in done_first}

    # run 2: resumes; finished jobs untouched; the bad spec fails alone; exit status 1
    r = subprocess.run([sys.executable, str(driver), str(study), str(out)], env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    rec = json.loads((out / "study.json").read_text())
    jobs = {j["id"]: j for j in rec["jobs"]}
    assert list(jobs) == ["atlas-gpt2", "atlas-llama-step1", "atlas-llama-step2", "atlas-llama-step4", "atlas-bad",
                          "dynamics-llama", "compare"]
    assert jobs["atlas-bad"]["status"] == "failed" and "unknown family 'nosuchfamily'" in jobs["atlas-bad"]["error"]
    assert "\n" not in jobs["atlas-bad"]["error"]
    assert "FAILED atlas-bad: " in r.stdout                      # retried (and reported) on every run
    for jid, j in jobs.items():
        if jid != "atlas-bad":
            assert j["status"] == "finished", (jid, j)
            assert (out / j["folder"] / ".iclscope-finished.json").exists()
    for jid in done_first:
        assert jobs[jid]["reused"] and _fingerprint(out / jid) == before[jid], jid
        assert f"started {jid} " not in r.stdout
    assert jobs["atlas-gpt2"]["resources"]["num_cpus"] == 1 and jobs["atlas-gpt2"]["resources"]["num_gpus"] == 0
    # the dynamics job reused the three atlas folders' scores
    import pandas as pd
    ck = pd.read_csv(out / "dynamics-llama" / "checkpoints.csv")
    assert ck.checkpoint.tolist() == ["step1", "step2", "step4"] and ck.reused_from.notna().all()
    # the comparison of the final checkpoints, without the failed model
    assert jobs["compare"]["folder"] == "compare-without-bad"
    cmp = json.loads((out / "compare-without-bad" / "summary.json").read_text())
    assert [m["label"] for m in cmp["models"]] == ["gpt2", "llama"]
    assert [m["revision"] for m in cmp["models"]] == [None, "step4"]
    report = (out / "report.html").read_text()
    assert "atlas-bad" in report and "unknown family" in report and "href='atlas-gpt2/report.html'" in report
    assert "Comparison of the final checkpoints" in report and "compare-without-bad/report.html" in report
    assert not (out / ".iclscope-finished.json").exists()      # a study with a failed job is not finished
    assert json.loads((out / ".iclscope.json").read_text())["command"] == "study"

    # run 3, without the bad model: nothing is recomputed, the full comparison runs, the study is finished
    all_before = {j: _fingerprint(out / j) for j in jobs if j not in ("atlas-bad", "compare")}
    study.write_text(STUDY.split('[[model]]\nspec = "random:nosuchfamily"')[0] + STUDY.split('label = "bad"')[1])
    r = subprocess.run([sys.executable, str(driver), str(study), str(out)], env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert all(_fingerprint(out / j) == fp for j, fp in all_before.items())
    assert (out / "compare" / ".iclscope-finished.json").exists() and (out / ".iclscope-finished.json").exists()
    assert time.time() - t0 < 400
