"""The results-folder contract (iclscope.store + iclscope.report.results): ownership, config, lock, finished
markers, stages, strict JSON, safe names, and crash safety under SIGKILL at every fault point."""

import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from iclscope import IclscopeError, store
from iclscope.report import ResultsDir
from iclscope.report.results import BOOKKEEPING, FINISHED, MARKER, STAGES
from iclscope.store import inside, safe_name

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill and lock tests fork")

CFG = {"command": "test", "model": "random:gpt2", "train": {"lr": 0.001, "seeds": [1, 2]}}


def tree_hashes(folder: Path) -> dict:
    """{relative path: sha256} of every file under ``folder`` (bookkeeping included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def in_child(fn, env=None) -> int:
    """Run ``fn()`` in a forked child (with extra environment ``env``); returns its wait status as
    ``-signal`` if it was killed, else its exit code."""
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.environ.update(env or {})
            fn()
        except BaseException as e:  # noqa: BLE001 - report and exit, never return into pytest
            print("child failed:", repr(e), flush=True)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


# ------------------------------------------------------------------------------------------- ownership

def test_foreign_non_empty_folder_refused_and_untouched(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = tree_hashes(out)
    names_before = sorted(os.listdir(out))
    with pytest.raises(IclscopeError, match="not made by iclscope") as e:
        ResultsDir(out, CFG)
    assert str(out) in str(e.value) and "nothing was written" in str(e.value) and "\n" not in str(e.value)
    assert tree_hashes(out) == before and sorted(os.listdir(out)) == names_before


def test_foreign_folder_with_a_config_json_of_another_tool_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"other": "tool"}')
    before = tree_hashes(tmp_path)
    with pytest.raises(IclscopeError, match="not made by iclscope"):
        ResultsDir(tmp_path, CFG)
    assert tree_hashes(tmp_path) == before


def test_empty_folder_adopted_and_marked(tmp_path):
    with ResultsDir(tmp_path, CFG) as res:
        res.write_table("t.csv", pd.DataFrame({"a": [1, 2]}))
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker["command"] == "test" and marker["created"] and "version" in marker
    assert json.loads((tmp_path / "config.json").read_text()) == CFG
    with ResultsDir(tmp_path, CFG) as res:  # ours now: reopening with the same config reuses it
        assert res.read_table("t.csv")["a"].tolist() == [1, 2]


def test_new_nested_folder_created(tmp_path):
    with ResultsDir(tmp_path / "a" / "b", CFG) as res:
        assert res.path.is_dir() and (res.path / MARKER).exists()


def test_legacy_folder_with_same_config_adopted(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    with ResultsDir(tmp_path, CFG):
        pass
    assert (tmp_path / MARKER).exists()


def test_file_instead_of_folder_refused(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("x")
    with pytest.raises(IclscopeError, match="is a file, not a folder"):
        ResultsDir(f, CFG)
    with pytest.raises(IclscopeError, match="cannot create the results folder"):
        ResultsDir(f / "sub", CFG)
    assert f.read_text() == "x"


def test_unwritable_location_refused(tmp_path):
    with pytest.raises(IclscopeError, match="cannot create the results folder"):
        ResultsDir("/proc/iclscope-results", CFG)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(IclscopeError, match="cannot"):
                ResultsDir(ro, CFG)
        finally:
            ro.chmod(0o755)


# ---------------------------------------------------------------------------------------------- config

def test_different_config_refused_naming_dotted_keys(tmp_path):
    with ResultsDir(tmp_path, CFG) as res:
        res.write_table("t.csv", pd.DataFrame({"a": [1]}))
    before = tree_hashes(tmp_path)
    other = {**CFG, "model": "random:llama", "train": {"lr": 0.01, "seeds": [1, 2], "extra": 1}}
    with pytest.raises(IclscopeError) as e:
        ResultsDir(tmp_path, other)
    msg = str(e.value)
    assert "different config" in msg and "model" in msg and "train.lr" in msg and "train.extra" in msg
    assert "train.seeds" not in msg and "\n" not in msg
    assert tree_hashes(tmp_path) == before
    with ResultsDir(tmp_path, CFG):  # the refused attempt left the lock free
        pass


def test_failed_start_then_corrected_rerun(tmp_path):
    with pytest.raises(RuntimeError):
        with ResultsDir(tmp_path, {**CFG, "model": "typo"}):
            raise RuntimeError("the command failed before writing any result")
    assert (tmp_path / "config.json").exists()
    with ResultsDir(tmp_path, CFG) as res:  # corrected rerun: accepted, config replaced
        assert res.replaced == ["model"]
        res.write_table("t.csv", pd.DataFrame({"a": [1]}))
        res.mark_finished()
    assert json.loads((tmp_path / "config.json").read_text()) == CFG


def test_unfinished_stage_is_not_a_result_but_a_finished_one_is(tmp_path):
    with ResultsDir(tmp_path, CFG) as res:
        res.stage("scores", {"n": 1})  # started, never finished
    with ResultsDir(tmp_path, {**CFG, "model": "x"}) as res:
        assert not res.holds_results()
        res.stage("scores", {"n": 1}).finish()
    with pytest.raises(IclscopeError, match="differs in: model"):
        ResultsDir(tmp_path, CFG)


def test_overwrite_takes_the_new_config(tmp_path):
    with ResultsDir(tmp_path, CFG) as res:
        res.write_table("t.csv", pd.DataFrame({"a": [1]}))
        res.mark_finished()
    with ResultsDir(tmp_path, {**CFG, "model": "other"}, overwrite=True) as res:
        assert res.replaced == ["model"] and res.was_finished and not res.finished
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "other"


def test_config_stored_as_strict_json(tmp_path):
    with ResultsDir(tmp_path, {"command": "t", "x": float("nan"), "p": Path("/a"), "t": (1, 2)}) as res:
        assert res.config == {"command": "t", "x": None, "p": "/a", "t": [1, 2]}
    assert "NaN" not in (tmp_path / "config.json").read_text()


# ------------------------------------------------------------------------------------------------ lock

def test_second_writer_fails_naming_the_holder_pid_and_death_releases(tmp_path):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the holder: open, tell the parent, wait to be killed
        try:
            os.close(r)
            res = ResultsDir(tmp_path, CFG)
            os.write(w, b"1")
            time.sleep(60)
            res.close()
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
        with pytest.raises(IclscopeError) as e:
            ResultsDir(tmp_path, CFG)
        assert f"PID {pid}" in str(e.value) and "in use" in str(e.value) and "\n" not in str(e.value)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
    with ResultsDir(tmp_path, CFG) as res:  # the OS released the dead holder's lock
        res.write_text("after.txt", "ok")


def test_lock_released_by_close_and_held_until_then(tmp_path):
    res = ResultsDir(tmp_path, CFG)
    with pytest.raises(IclscopeError, match=f"already open in this process \\(PID {os.getpid()}\\)"):
        ResultsDir(tmp_path, CFG)
    res.close()
    res.close()  # idempotent
    with ResultsDir(tmp_path, CFG):
        pass


# -------------------------------------------------------------------------------------------- finished

def test_finished_is_a_marker_written_last_not_a_file(tmp_path):
    with ResultsDir(tmp_path, CFG) as res:
        res.write_table("heads.csv", pd.DataFrame({"a": [1]}))
        res.write_text("report.html", "<html/>")
        assert not res.finished  # every result file exists, but nobody said it is finished
        res.mark_finished({"seconds": 1.5})
        assert res.finished
    assert json.loads((tmp_path / FINISHED).read_text())["seconds"] == 1.5
    with ResultsDir(tmp_path, CFG) as res:  # a rerun withdraws it until it marks again
        assert res.was_finished and not res.finished


# ---------------------------------------------------------------------------------------------- stages

def test_stage_reused_by_key_and_recomputed_when_it_changes(tmp_path):
    with ResultsDir(tmp_path, {**CFG, "n_eval": 10}) as res:
        scores = res.stage("scores", {"model": "m", "seed": 0, "n": 5})
        evals = res.stage("eval", {"model": "m", "n_eval": 10})
        assert not scores.done and not evals.done and scores.status == "computing"
        scores.write_table("heads.csv", pd.DataFrame({"s": [1.0]}))
        scores.finish({"seconds": 3})
        evals.write_table("acc.csv", pd.DataFrame({"acc": [0.5]}))
        evals.write_table("old_only.csv", pd.DataFrame({"x": [1]}))
        evals.finish()
    assert (tmp_path / "scores" / "heads.csv").exists()
    with ResultsDir(tmp_path, {**CFG, "n_eval": 20}, overwrite=True) as res:
        scores = res.stage("scores", {"model": "m", "seed": 0, "n": 5})
        evals = res.stage("eval", {"model": "m", "n_eval": 20})
        assert scores.done and scores.status == "reused" and scores.info == {"seconds": 3}
        assert scores.read_table("heads.csv")["s"].tolist() == [1.0]
        assert not evals.done and evals.status == "recomputing" and evals.changed == ["n_eval"]
        assert not evals.has("old_only.csv")  # the old key's files are gone
        lines = res.log_reuse(log=lambda s: None)
        assert any("reusing scores" in line for line in lines)
        assert any("recomputing eval" in line and "n_eval" in line for line in lines)


def test_unfinished_stage_with_same_key_keeps_its_files(tmp_path):
    with ResultsDir(tmp_path, CFG) as res:
        st = res.stage("per_task", {"k": 1})
        st.write_table("task_a.csv", pd.DataFrame({"a": [1]}))  # killed before task_b and finish
    with ResultsDir(tmp_path, CFG) as res:
        st = res.stage("per_task", {"k": 1})
        assert st.status == "resumed" and not st.done and st.has("task_a.csv")


def test_stage_names_from_users_are_safe(tmp_path):
    with ResultsDir(tmp_path, CFG) as res:
        st = res.stage("../../escape", {"k": 1})
        assert st.path.parent == res.path and ".." not in st.path.name
        with pytest.raises(IclscopeError, match="reserved"):
            res.stage("config.json", {})


# ------------------------------------------------------------------------------------- names and writes

def test_safe_name_rules():
    hostile = ["/../", "..", ".", "", "a/b", "a\\b", "../../etc/passwd", "~", ".hidden", "a\x00b", "x" * 300,
               "é", "日本", "🙂", "a b", "a_b", "a?b", "a:b", "con"]
    names = [safe_name(v) for v in hostile]
    for v, n in zip(hostile, names):
        assert n and "/" not in n and "\\" not in n and "\x00" not in n and ".." not in n, (v, n)
        assert not n.startswith(".") and len(n) <= 100 and n == safe_name(v)
    assert len(set(names)) == len(names)  # distinct inputs, distinct names
    assert safe_name("copy") == "copy" and safe_name(0.1) == "0.1" and safe_name(3) == "3"
    assert safe_name("a/b") != safe_name("a_b") and safe_name("a/b").startswith("a_b-")
    tricky = safe_name("a/b")  # a user value that looks like a hashed name is hashed too
    assert safe_name(tricky) != tricky
    assert safe_name("é") != safe_name("è") and safe_name("x" * 300) != safe_name("x" * 301)


def test_inside_refuses_escapes(tmp_path):
    assert inside(tmp_path, "a/b.csv") == tmp_path / "a" / "b.csv"
    for bad in ["../x", "/etc/passwd", "", "a/../../x", ".", "a/.."]:
        with pytest.raises(IclscopeError):
            inside(tmp_path, bad)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(IclscopeError, match="outside"):
        inside(tmp_path, "link/x")
    with ResultsDir(tmp_path / "r", CFG) as res:
        with pytest.raises(IclscopeError, match="outside"):
            res.write_table("../../x.csv", pd.DataFrame({"a": [1]}))
        with pytest.raises(IclscopeError, match="bookkeeping"):
            res.write_json("config.json", {})
    assert not (tmp_path / "x.csv").exists()


def test_strict_json_never_bare_nan(tmp_path):
    import numpy as np
    import torch

    obj = {"nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "np": np.float32(0.5),
           "arr": np.array([1.0, np.nan]), "t": torch.tensor([2.0, float("inf")]), "i": np.int64(3),
           1: {"nested": [float("nan"), (1, 2)]}, "s": {2, 1}}
    p = store.write_json(tmp_path / "x.json", obj)
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"nan": None, "inf": None, "ninf": None, "np": 0.5, "arr": [1.0, None],
                                "t": [2.0, None], "i": 3, "1": {"nested": [None, [1, 2]]}, "s": [1, 2]}
    with ResultsDir(tmp_path / "r", CFG) as res:
        res.write_json("summary.json", {"x": float("nan")})
        assert res.read_json("summary.json") == {"x": None}


def test_atomic_writes_leave_no_temp_and_keep_permissions(tmp_path):
    store.write_text(tmp_path / "a.txt", "hello")
    store.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    store.write_csv(tmp_path / "c.csv", pd.DataFrame({"a": [1.5]}))
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.bin", "c.csv"]
    assert (tmp_path / "a.txt").read_text() == "hello" and (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "a.txt").stat().st_mode & 0o044  # readable by others as usual, not mkstemp's 0600


def test_write_figure(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with ResultsDir(tmp_path, CFG) as res:
        p = res.write_figure("line.png", fig)
        res.write_figure("line.svg", fig)
    plt.close(fig)
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "line.svg").read_text().lstrip().startswith("<")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(store.TMP_PREFIX)]


def test_write_folder_replaces_an_existing_folder(tmp_path):
    def fill(v):
        def f(d):
            (d / "weights.bin").write_bytes(bytes([v]) * 1000)
            (d / "meta.json").write_text(json.dumps({"v": v}))
        return f

    dest = store.write_folder_atomically(tmp_path / "ckpt", fill(1))
    store.write_folder_atomically(dest, fill(2))
    assert json.loads((dest / "meta.json").read_text()) == {"v": 2} and sorted(os.listdir(tmp_path)) == ["ckpt"]
    with pytest.raises(ZeroDivisionError):  # a failing fill leaves the old folder and no temp
        store.write_folder_atomically(dest, lambda d: 1 / 0)
    assert json.loads((dest / "meta.json").read_text()) == {"v": 2} and sorted(os.listdir(tmp_path)) == ["ckpt"]


# ------------------------------------------------------------------------------------------ kill tests

KILL_CFG = {"command": "kill-test", "n": 3}
WEIGHTS = bytes(range(256)) * 64


def writer(out: Path) -> None:
    """A small command: a stage, a table, a strict-JSON summary, a checkpoint folder, then finished."""
    with ResultsDir(out, KILL_CFG) as res:
        st = res.stage("scores", {"n": 3})
        if not st.done:
            st.write_table("heads.csv", pd.DataFrame({"layer": range(50), "score": [i / 7 for i in range(50)]}))
            st.finish()
        res.write_table("table.csv", pd.DataFrame({"x": range(200), "y": [float(i) ** 0.5 for i in range(200)]}))
        res.write_json("summary.json", {"mean": 1.25, "bad": float("nan"), "names": ["a", "b"] * 30})
        res.write_text("report.html", "<html>" + "r" * 3000 + "</html>")

        def fill(d: Path) -> None:
            (d / "weights.bin").write_bytes(WEIGHTS)
            store.fault_point("folder:after-weights")
            (d / "meta.json").write_text(json.dumps({"step": 10}))
        res.write_folder("checkpoint", fill)
        res.mark_finished()


KINDS = ["text", "json", "csv"]
LABELS = ([f"{k}:{s}" for k in KINDS for s in ("mid-write", "before-fsync", "before-replace", "after-replace")]
          + ["folder:after-weights", "folder:after-fill", "folder:before-swap", "folder:after-old-moved",
             "folder:after-replace", "results:after-marker", "results:before-config", "results:before-finished",
             "stage:before-finish"])
TIMESTAMPED = {MARKER, FINISHED}


def results_view(out: Path) -> dict:
    """The folder's files as {path: sha256}, leaving out the lock/PID and timestamped bookkeeping."""
    return {k: v for k, v in tree_hashes(out).items()
            if Path(k).name not in TIMESTAMPED | {".iclscope.lock", ".iclscope.pid"} and not k.startswith(STAGES)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    assert in_child(lambda: writer(out)) == 0
    return results_view(out)


def assert_no_partial_file(out: Path, reference: dict) -> None:
    """Every file under a final name is complete: equal to the uninterrupted run's, or valid bookkeeping."""
    for rel, digest in results_view(out).items():
        if Path(rel).name.startswith(store.TMP_PREFIX) or store.TMP_PREFIX in rel:
            continue  # a temp entry, never a final name
        assert rel in reference and digest == reference[rel], f"partial or wrong file under a final name: {rel}"
    for p in out.rglob("*.json"):
        if store.TMP_PREFIX not in str(p):
            json.loads(p.read_text())  # every JSON under a final name parses


@pytest.mark.parametrize("label", LABELS)
@pytest.mark.parametrize("start", ["fresh", "rerun"])
def test_killed_at_fault_point_then_rerun_matches(tmp_path, reference, label, start):
    out = tmp_path / "out"
    if start == "rerun":  # the killed run rewrites a finished folder (checkpoint replaced, etc.)
        assert in_child(lambda: writer(out)) == 0
    rc = in_child(lambda: writer(out), env={store.FAULT_ENV: label})
    reached = rc == -signal.SIGKILL
    assert rc in (0, -signal.SIGKILL)
    if start == "fresh" and label != "folder:after-old-moved":  # on the path of a fresh run
        assert reached, f"fault point {label} never reached"
    if start == "rerun" and label.startswith("folder:"):  # the checkpoint is replaced on a rerun
        assert reached, f"fault point {label} never reached"
    if out.exists():
        assert_no_partial_file(out, reference)
        if reached and start == "fresh" and (out / MARKER).exists():
            with ResultsDir(out, KILL_CFG) as res:  # a killed run is never taken for a finished one
                assert not res.was_finished
    assert in_child(lambda: writer(out)) == 0  # the rerun, no fault
    assert results_view(out) == reference
    assert not [p for p in out.rglob("*") if store.TMP_PREFIX in p.name]
    with ResultsDir(out, KILL_CFG) as res:
        assert res.was_finished
        assert json.loads((out / "summary.json").read_text())["bad"] is None


def test_every_bookkeeping_name_is_known():
    assert {MARKER, FINISHED, STAGES, "config.json"} <= BOOKKEEPING
