"""Issue 9 for the analysis commands: a foreign --out is refused byte for byte, a killed atlas resumes to
the same tables, stages are reused by key, and bad model-level input is refused before any work."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import iclscope
from iclscope import IclscopeError
from iclscope.experiments.atlas import run_atlas, run_scores
from iclscope.experiments.compare import run_compare
from iclscope.experiments.demo import run_demo
from iclscope.experiments.dynamics import run_dynamics
from iclscope.tasks import build_tasks
from iclscope.tasks.core import TaskError

SPEC = "random:gpt2:layers=2,heads=4,d_model=32"
FAST = dict(k=3, n_clean=4, n_corrupt=2, n_eval=4, random_seeds=1, fractions=(0.0, 0.25), measures=("first_token",))
quiet = lambda *a: None  # noqa: E731


def tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def foreign(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    for name, text in (("summary.json", '{"mine": 1}'), ("report.html", "<p>mine</p>"), ("config.json", "{}"),
                       ("heads.csv", "layer,head,induction,fv\n0,0,1,1\n"), ("capitalize.json", "[]")):
        (d / name).write_text(text)
    return d, tree_hash(d)


@pytest.fixture(scope="module")
def model():
    return iclscope.load(SPEC)


def test_every_command_refuses_a_foreign_out(foreign, model, tmp_path):
    d, before = foreign
    with pytest.raises(IclscopeError, match="not empty and was not made by iclscope"):
        run_scores(SPEC, d, model=model, log=quiet, k=3, n_clean=4, n_corrupt=2)
    with pytest.raises(IclscopeError, match="not empty and was not made by iclscope"):
        run_atlas(SPEC, d, model=model, log=quiet, **FAST)
    with pytest.raises(IclscopeError, match="not empty and was not made by iclscope"):
        run_demo(d, model_spec=SPEC, n_seqs=2, half=4, train=False, log=quiet)
    with pytest.raises(TaskError, match="not empty and was not made by `iclscope tasks build`"):
        build_tasks(d, names=["capitalize"])
    run_scores(SPEC, tmp_path / "a", model=model, log=quiet, k=3, n_clean=4, n_corrupt=2)
    run_scores(SPEC, tmp_path / "b", model=model, log=quiet, k=3, n_clean=4, n_corrupt=2)
    with pytest.raises(IclscopeError, match="not empty and was not made by iclscope"):
        run_compare([tmp_path / "a", tmp_path / "b"], d, log=quiet)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    iclscope.TinyModel(iclscope.TinyConfig(n_layers=1, d_model=16, n_heads=2, vocab_size=40)).save(
        tmp_path / "run" / "checkpoints" / "step_0000001", extra={"step": 1})
    with pytest.raises(IclscopeError, match="not empty and was not made by iclscope"):
        run_dynamics(d, run=tmp_path / "run", log=quiet, k=3, n_clean=4, n_corrupt=2, n_eval=4)
    assert tree_hash(d) == before


def test_failed_starts_leave_nothing(model, tmp_path):
    for bad in (dict(fractions=(0.0, 2.0)), dict(how="max"), dict(positions="first"), dict(n_eval=0)):
        with pytest.raises(IclscopeError):
            run_atlas(SPEC, tmp_path / "o", model=model, log=quiet, **{**FAST, **bad})
    with pytest.raises(IclscopeError):
        run_atlas("random:nosuchfamily", tmp_path / "o", log=quiet, **FAST)
    with pytest.raises(IclscopeError, match="no such folder"):
        run_scores(SPEC, tmp_path / "o", tasks_dir=tmp_path / "nothing", model=model, log=quiet)
    assert not (tmp_path / "o").exists()


def test_stage_reuse_by_key(model, tmp_path):
    out = tmp_path / "a"
    run_atlas(SPEC, out, model=model, log=quiet, **FAST)
    heads, fv = (out / "heads.csv").read_bytes(), (out / "fv_per_task.csv").read_bytes()
    msgs = []
    run_atlas(SPEC, out, model=model, log=msgs.append, **{**FAST, "n_eval": 6})
    text = "\n".join(msgs)
    assert "reusing attention" in text and "reusing fv-" in text
    assert "recomputing ablation: its settings changed (n_eval)" in text
    assert "recomputing function_vectors" in text
    assert (out / "heads.csv").read_bytes() == heads and (out / "fv_per_task.csv").read_bytes() == fv
    assert (out / ".iclscope-finished.json").exists()
    with pytest.raises(IclscopeError, match=r"differs in: model"):
        run_atlas("random:gpt2", out, model=model, log=quiet, **FAST)


def test_tasks_build_never_overwrites_user_files(tmp_path):
    d = tmp_path / "t"
    build_tasks(d, names=["capitalize"], words_file=tmp_path / "no_words")  # resource missing: skipped
    assert not d.exists() or not any(d.iterdir())
    # a folder made by tasks build, where the user has since put a capitalize.json of their own
    d.mkdir(exist_ok=True)
    (d / ".iclscope-tasks").write_text('{"iclscope": "tasks", "files": ["antonym"]}')
    (d / "capitalize.json").write_text('[{"input": "mine", "output": "MINE"}]')
    before = tree_hash(d)
    with pytest.raises(TaskError, match="capitalize.json was not written by"):
        build_tasks(d, names=["capitalize"])
    assert tree_hash(d) == before


ATLAS_SCRIPT = """
import sys, iclscope
from iclscope.experiments.atlas import run_atlas
run_atlas({spec!r}, sys.argv[1], log=lambda *a: None, k=3, n_clean=4, n_corrupt=2, n_eval=4, random_seeds=1,
          fractions=(0.0, 0.25), measures=("first_token",))
"""


@pytest.mark.parametrize("label", ["stage:before-finish", "csv:before-replace"])
def test_killed_atlas_resumes_to_the_same_tables(tmp_path, label):
    script = ATLAS_SCRIPT.format(spec=SPEC)
    src = str(Path(iclscope.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "ICLSCOPE_FAULT": label}
    killed = subprocess.run([sys.executable, "-c", script, str(tmp_path / "k")], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert not (tmp_path / "k" / ".iclscope-finished.json").exists()
    env.pop("ICLSCOPE_FAULT")
    for out in ("k", "fresh"):
        r = subprocess.run([sys.executable, "-c", script, str(tmp_path / out)], env=env, capture_output=True)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
    for f in ("heads.csv", "fv_per_task.csv", "ablation.csv", "function_vectors.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "k" / f), pd.read_csv(tmp_path / "fresh" / f))
    assert not [p for p in (tmp_path / "k").rglob(".iclscope-tmp.*")]


def test_model_level_input_is_refused(tmp_path, model):
    for suffix in (".pt", ".bin", ".pkl"):
        f = tmp_path / f"model{suffix}"
        f.write_bytes(b"x")
        with pytest.raises(IclscopeError, match="never unpickles"):
            iclscope.load(f)
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(IclscopeError, match="is a file; a model is a folder"):
        iclscope.load(tmp_path / "weights.safetensors")
    with pytest.raises(IclscopeError, match="a revision only applies to hub models"):
        iclscope.load(SPEC, revision="step1")
    with pytest.raises(IclscopeError, match="a revision only applies to hub models"):
        iclscope.load(tmp_path, revision="main")
    with pytest.raises(IclscopeError, match="unknown dtype"):
        iclscope.load(SPEC, dtype="float8")
    if not torch.cuda.is_available():
        for dev in ("cuda", "cuda:1"):
            with pytest.raises(IclscopeError, match="no CUDA device"):
                iclscope.load(SPEC, device=dev)
    with pytest.raises(IclscopeError, match="empty input"):
        model(torch.zeros(0, 4, dtype=torch.long))
    with pytest.raises(IclscopeError, match="empty input"):
        model(torch.zeros(2, 0, dtype=torch.long))
    short = iclscope.load("random:gpt2:layers=1,heads=2,d_model=16,n_ctx=8")
    with pytest.raises(IclscopeError, match="longer than the model's n_ctx=8"):
        short(torch.zeros(1, 9, dtype=torch.long))
