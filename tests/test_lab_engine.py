"""Lab sweeps on the engine (``iclscope.engine``, a local Ray of 2 CPUs shared by the whole file): each stack
of runs is one engine job; the runs' metrics are those of the runs trained alone with ``Trainer``; a second
call reuses every finished run untouched; a failing stack is reported on one line while the others finish,
and the sweep then raises naming it; a worker that cannot write the sweep folder fails with one line."""

import hashlib
import json
import socket
import time
from pathlib import Path

import pandas as pd
import pytest

from iclscope.engine import Engine, Resources
from iclscope.experiments.lab import SweepFailed, SweepEngine, _run_all, clamp_sweep, data_sweep
from iclscope.train import Trainer, load_config

TINY = ["train.sequences=160", "train.batch_size=16", "eval.every=5", "eval.batch=32", "eval.checkpoint_every=10",
        "data.dim=32", "model.d_model=32", "model.n_heads=4", "train.lr=3e-3", "train.threads=1"]
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def engine():
    with Engine(num_cpus=2) as eng:
        yield eng


def _metrics(run: Path) -> list[pd.DataFrame]:
    return [pd.read_csv(run / f"seed_{s}" / "metrics.csv") for s in SEEDS]


def _alone(run: Path, ref: Path) -> list[pd.DataFrame]:
    """The run trained again by itself, in this process, from the config the sweep gave it."""
    cfg = json.loads((run / "config.json").read_text())
    Trainer(cfg, ref / run.name, progress=False, log=lambda *a: None).train()
    return _metrics(ref / run.name)


def _fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".iclscope.lock")}


def test_clamp_sweep_on_the_engine_is_the_runs_alone_and_reuses_them(tmp_path, engine, capsys):
    out = tmp_path / "sweep"
    msgs: list[str] = []
    table = clamp_sweep(load_config(None, TINY), out=out, seeds=SEEDS, sequences=160,
                        conditions=["none", "prev_token"], engine=engine, log=msgs.append)
    assert table.condition.tolist() == ["none", "prev_token"]
    assert (out / ".iclscope-finished.json").exists()
    err = capsys.readouterr().err
    # two runs, two CPUs: the stack of both is split, one job per run
    assert "2/2 run" in err and f"finished {out / 'none'}" in err and f"finished {out / 'prev_token'}" in err
    for c in ("none", "prev_token"):
        cfg = json.loads((out / c / "config.json").read_text())
        assert cfg["train"]["seeds"] == SEEDS and cfg["train"]["threads"] == 1
        assert bool(cfg["clamp"]) == (c == "prev_token")
        for got, want in zip(_metrics(out / c), _alone(out / c, tmp_path / "alone")):
            assert len(got) == 3  # steps 0, 5, 10
            pd.testing.assert_frame_equal(got, want, check_exact=True)  # one run per stack: the same code path
    # the second call trains nothing: every run is reused, its files untouched
    before = {c: _fingerprint(out / c) for c in ("none", "prev_token")}
    msgs = []
    table2 = clamp_sweep(load_config(None, TINY), out=out, seeds=SEEDS, sequences=160,
                         conditions=["none", "prev_token"], engine=engine, log=msgs.append)
    assert sum("reusing finished run" in m for m in msgs) == 2
    assert "trainings" not in capsys.readouterr().err  # no progress bar: no job was submitted
    assert {c: _fingerprint(out / c) for c in ("none", "prev_token")} == before
    pd.testing.assert_frame_equal(table, table2)


def test_data_sweep_stacks_on_the_engine_like_the_runs_alone(tmp_path, engine, capsys):
    out = tmp_path / "ds"
    msgs: list[str] = []
    # three learning rates share one shape: one stack of 3, split over the 2 CPUs into stacks of 1 and 2
    data_sweep(load_config(None, TINY), vary="train.lr=0.001,0.002,0.003", out=out, seeds=SEEDS, engine=engine,
               log=msgs.append)
    assert "  3 runs in 2 stack(s)" in msgs
    runs = [out / f"train.lr={v}" for v in ("0.001", "0.002", "0.003")]
    for run in runs:
        for got, want in zip(_metrics(run), _alone(run, tmp_path / "alone")):
            # a run of a stack equals the run alone to float rounding (tests/test_stack.py)
            pd.testing.assert_frame_equal(got, want, check_exact=False, atol=2e-5, rtol=1e-4)
    assert "3/3 run" in capsys.readouterr().err


def test_a_failing_stack_is_reported_and_the_others_finish(tmp_path, engine, capsys):
    out = tmp_path / "ds"
    bad, good = out / "train.lr=10000000000", out / "train.lr=0.003"
    with pytest.raises(SweepFailed, match=rf"^1 run\(s\) of the sweep failed: {bad} \(errors above\); the same "
                                          r"command retries them and reuses the finished runs$"):
        data_sweep(load_config(None, TINY), vary="train.lr=0.003,10000000000", out=out, seeds=SEEDS, engine=engine,
                   log=lambda *a: None)
    lines = capsys.readouterr().err.splitlines()
    failed = [ln for ln in lines if "FAILED" in ln]
    assert len(failed) == 1 and failed[0].startswith(f"  FAILED {bad} (on {socket.gethostname()}): training "
                                                     f"diverged at step ")
    assert f"  finished {good}" in lines
    assert (good / ".iclscope-finished.json").exists() and not (bad / ".iclscope-finished.json").exists()
    assert not (out / ".iclscope-finished.json").exists() and not (out / "phase_change.csv").exists()
    # running it again reuses the finished run and retries only the failed one
    before = _fingerprint(good)
    msgs: list[str] = []
    with pytest.raises(SweepFailed, match="1 run"):
        data_sweep(load_config(None, TINY), vary="train.lr=0.003,10000000000", out=out, seeds=SEEDS, engine=engine,
                   log=msgs.append)
    assert msgs.count(f"  reusing finished run {good}") == 1 and _fingerprint(good) == before
    assert "0/1 run" in capsys.readouterr().err


def test_a_worker_that_cannot_write_the_sweep_folder_fails_clearly(tmp_path, engine, capsys):
    cfg = load_config(None, TINY)
    gone = tmp_path / "not-shared"
    failed = _run_all([(cfg, gone / "run")], gone, SweepEngine(engine, None, 2), log=lambda *a: None)
    assert failed == [gone / "run"] and not gone.exists()
    [line] = [ln for ln in capsys.readouterr().err.splitlines() if "FAILED" in ln]
    host = socket.gethostname()
    assert line == (f"  FAILED {gone / 'run'} (on {host}): host {host} cannot write the results folder {gone}: no "
                    f"such folder on that host; --out must be on storage that every node of the cluster shares")


def test_a_clamp_sweep_whose_reference_fails_trains_no_graft(tmp_path, engine, capsys):
    msgs: list[str] = []
    with pytest.raises(SweepFailed, match=r"failed: .*none.*; not trained, since they graft from a failed run: "
                                          r".*layer1"):
        clamp_sweep(load_config(None, TINY + ["train.lr=10000000000"]), out=tmp_path / "cs", seeds=[0],
                    sequences=64, conditions=["layer1"], engine=engine, log=msgs.append)
    assert "  not training layer1: they graft from none, which failed" in msgs
    assert not (tmp_path / "cs" / "layer1").exists()


def test_engine_cancel_stops_a_running_job(engine):
    """What a sweep interrupted by Ctrl-C does with the stacks still running."""
    job = engine.submit(time.sleep, 600, resources=Resources(num_cpus=1), name="sleeper")
    time.sleep(1.0)
    t0 = time.time()
    engine.cancel([job])
    ended, running = engine.wait([job], timeout=60)
    assert ended == [job] and not running and time.time() - t0 < 30
    out = engine.outcome(job)
    assert not out["ok"] and "TaskCancelledError" in out["error"], out
    engine.cancel([job])  # an ended job: nothing happens
