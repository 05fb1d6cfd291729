"""The training step's two shortcuts: logits of the final position only (``run(final_only=True)``: the
tiny model's last block computes its query there alone) and the compiled step (``train.compile``: the
objective's hook-free loss through ``torch.compile``). Both must give the numbers of the full eager pass:
logits and gradients equal to float rounding, whatever hooks are live."""

import pytest
import torch

import iclscope
from iclscope.errors import IclscopeError
from iclscope.interventions import Ablate, ClampPattern
from iclscope.models.tiny import TinyConfig, TinyModel
from iclscope.train import Trainer, load_config
from iclscope.train.objectives import OBJECTIVES

CONFIGS = {
    "rotary, attention-only": dict(n_layers=2, n_heads=4, d_model=16, d_input=12, vocab_size=5),
    "learned, MLP, no LayerNorm": dict(n_layers=3, n_heads=2, d_model=16, d_mlp=24, positions="learned",
                                       layernorm=False, d_input=12, vocab_size=7),
    "no positions": dict(n_layers=2, n_heads=4, d_model=16, positions="none", vocab_size=9),
}


def _inputs(cfg: TinyConfig, B: int, T: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (B, T), generator=g)
    if not cfg.d_input:
        return {"tokens": tokens}
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[:, 0::2] = True
    return {"tokens": tokens, "vectors": torch.randn(B, T, cfg.d_input, generator=g), "vector_mask": mask}


@pytest.fixture
def shortcuts(monkeypatch):
    """How many times the last block took its final-position shortcut (``Block._final``)."""
    from iclscope.models.tiny import Block
    calls = []
    real = Block._final

    def spy(self, *a, **k):
        calls.append(self.layer)
        return real(self, *a, **k)
    monkeypatch.setattr(Block, "_final", spy)
    return calls


def _grads(model: TinyModel, logits: torch.Tensor) -> list[torch.Tensor]:
    model.module.zero_grad(set_to_none=True)
    logits.float().logsumexp(-1).sum().backward()
    return [p.grad.clone() for p in model.module.parameters()]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("T", [5, 13])  # 13 > SMALL_T: the matmul / SDPA attention paths
def test_final_only_equals_the_full_pass_sliced(name, T, shortcuts):
    cfg = TinyConfig(**CONFIGS[name], n_ctx=16)
    model = TinyModel(cfg, seeds=[3, 4])  # an ensemble of two
    x = _inputs(cfg, 6, T)
    full = model.run(x)[0]
    assert shortcuts == []
    short = model.run(x, final_only=True)[0]
    assert shortcuts == [cfg.n_layers - 1]  # the last block took the shortcut (the comparison is not vacuous)
    assert short.shape == (6, 1, cfg.vocab_size)
    torch.testing.assert_close(short, full[:, -1:], rtol=1e-5, atol=1e-6)
    for a, b in zip(_grads(model, model.run(x, final_only=True)[0]), _grads(model, model.run(x)[0][:, -1:])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("interventions, record, shortcut", [
    ([Ablate([(1, 0), (1, 2)], how="zero")], None, False),  # a live head hook in the last block: the full pass
    ([ClampPattern([(1, 1)], "prev_token")], None, False),
    ([Ablate([(0, 1)], how="zero")], ["resid_pre"], True),  # hooks before the last block's query: the shortcut
    ([], ["z", "resid_post"], False),  # recorders in the last block see every position
])
def test_final_only_under_hooks_sees_what_the_full_pass_sees(interventions, record, shortcut, shortcuts):
    cfg = TinyConfig(**CONFIGS["rotary, attention-only"], n_ctx=16)
    model = TinyModel(cfg, seed=1)
    x = _inputs(cfg, 4, 5)
    full, c_full = model.run(x, interventions=interventions, record=record)
    short, c_short = model.run(x, interventions=interventions, record=record, final_only=True)
    assert shortcuts == ([1] if shortcut else [])
    torch.testing.assert_close(short, full[:, -1:], rtol=1e-5, atol=1e-6)
    for site in record or []:
        torch.testing.assert_close(c_short.site(site, 1), c_full.site(site, 1))


def test_final_only_on_a_padded_ensemble_and_after_cached_keys():
    cfg = TinyConfig(**CONFIGS["rotary, attention-only"], n_ctx=16)
    small = TinyConfig(**{**CONFIGS["rotary, attention-only"], "vocab_size": 3}, n_ctx=16)
    padded = TinyModel.stacked([TinyModel(cfg, seed=0), TinyModel(small, seed=1)])
    x = _inputs(padded.cfg, 4, 7)
    torch.testing.assert_close(padded.run(x, final_only=True)[0], padded.run(x)[0][:, -1:], rtol=1e-5, atol=1e-6)
    # the module with cached keys/values of earlier positions (the final-token path's ``past``)
    model = TinyModel(TinyConfig(n_layers=2, n_heads=4, d_model=16, vocab_size=11, n_ctx=16), seed=2)
    tokens = torch.randint(0, 11, (3, 9), generator=torch.Generator().manual_seed(5))
    kv: dict = {}
    model.module(tokens[:, :6], kv_out=kv)
    past = [kv[i] for i in range(2)]
    full = model.module(tokens[:, 6:], past=past)
    torch.testing.assert_close(model.module(tokens[:, 6:], past=past, final_only=True), full[:, -1:],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(full[:, -1], model.run(tokens)[0][:, -1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_final_only_on_a_transformers_family_slices(family):
    model = iclscope.load(f"random:{family}")
    tokens = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.run(tokens, final_only=True)[0], model.run(tokens)[0][:, -1:])


# ---------------------------------------------------------------------------------------- the compiled step

SMALL = ["train.batch_size=8", "eval.every=10", "eval.batch=32", "data.dim=16", "model.d_model=16",
         "model.n_heads=4", "train.lr=3e-3", "train.threads=1", "train.seeds=[0, 1]"]


def _trainer(tmp_path, name, *extra):
    return Trainer(load_config(None, SMALL + list(extra)), tmp_path / name, progress=False, log=lambda *a: None)


@pytest.mark.parametrize("kind", sorted(OBJECTIVES))
def test_plain_loss_equals_the_objectives_loss(tmp_path, kind):
    extra = ["train.sequences=80", "train.compile=false", "train.batch_size=8", "train.seeds=[0, 1]"]
    if kind == "fewshot":
        t = _trainer(tmp_path, kind, *extra)
    else:
        cfg = load_config("testbed", ["model.d_model=16", "model.n_heads=4", "eval.batch=16"] + extra)
        assert cfg["data"]["kind"] == kind
        t = Trainer(cfg, tmp_path / kind, progress=False, log=lambda *a: None)
    try:
        batch = t.sample()
        inputs = t.objective.plain_inputs(batch)
        assert inputs is not None
        torch.testing.assert_close(t.objective.plain_loss(t.model.module, *inputs),
                                   t.objective.loss(t.model, batch), rtol=1e-5, atol=1e-6)
    finally:
        t.close()


def test_compile_auto_is_off_for_short_or_clamped_runs(tmp_path):
    short = _trainer(tmp_path, "short", "train.sequences=64000")
    cfg = load_config(None, SMALL + ["train.sequences=96000", "train.compile=true"])
    cfg["clamp"] = [{"kind": "Ablate", "heads": [[1, 0]], "how": "zero"}]
    clamped = Trainer(cfg, tmp_path / "clamped2", progress=False, log=lambda *a: None)
    long = _trainer(tmp_path, "long", "train.sequences=96000")
    try:
        assert short._compiled is None  # "auto": 8,000 steps do not pay for a cold compile
        assert clamped._compiled is None  # clamps change with the batch: eager
        assert long._compiled is not None  # "auto", 12,000 steps, no clamps
    finally:
        for t in (short, clamped, long):
            t.close()


def test_a_bad_compile_setting_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(IclscopeError, match="compile"):
        Trainer(load_config(None, SMALL + ["train.compile='yes'"]), tmp_path / "bad", progress=False,
                log=lambda *a: None)
    assert not (tmp_path / "bad").exists()


def test_compiled_training_follows_the_eager_one(tmp_path):
    """Thirty steps of a two-member ensemble, compiled and eager, from the same seeds: the same losses and
    weights up to float rounding (the compiled kernels sum in another order)."""
    runs = {}
    for mode in ("true", "false"):
        t = _trainer(tmp_path, mode, "train.sequences=240", f"train.compile={mode}")
        try:
            assert (t._compiled is not None) == (mode == "true")
            params = list(t.model.module.parameters())
            losses = []
            for _ in range(30):
                loss = t.loss(t.sample())
                t.opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                t.step_optimizer(params)
                losses.append(loss.detach())
            assert t._compiled is not None or mode == "false"  # it did not fall back
            runs[mode] = (torch.stack(losses), [p.detach().clone() for p in params])
        finally:
            t.close()
    torch.testing.assert_close(runs["true"][0], runs["false"][0], rtol=1e-4, atol=1e-5)
    for a, b in zip(runs["true"][1], runs["false"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_failing_compile_falls_back_to_the_eager_step_with_a_note(tmp_path, monkeypatch):
    notes = []

    def broken(*args, **kwargs):
        def fn(*a):
            raise RuntimeError("no C++ compiler here")
        return fn

    monkeypatch.setattr(torch, "compile", broken)
    t = Trainer(load_config(None, SMALL + ["train.sequences=240", "train.compile=true"]), tmp_path / "r",
                progress=False, log=notes.append)
    try:
        batch = t.sample()
        loss = t.loss(batch)
        assert t._compiled is None
        torch.testing.assert_close(loss, t.objective.loss(t.model, batch))
        assert any("train.compile" in n and "no C++ compiler here" in n for n in notes)
    finally:
        t.close()


def test_a_run_folder_from_before_train_compile_goes_on_eagerly(tmp_path):
    """A folder whose config.json predates train.compile (its run trained eagerly) is reused and resumed as
    before, eagerly, its config.json untouched; asking for the compiled step there is refused."""
    import json

    from iclscope.experiments.lab import run_finished
    from iclscope.train import train

    quiet = dict(progress=False, log=lambda *a: None)
    out = tmp_path / "old"
    cfg = load_config(None, SMALL + ["train.sequences=160", "train.compile=false"])
    train(cfg, out, **quiet)
    saved = json.loads((out / "config.json").read_text())
    del saved["train"]["compile"]
    (out / "config.json").write_text(json.dumps(saved))
    before = (out / "config.json").read_bytes()
    again = load_config(None, SMALL + ["train.sequences=160"])  # compile left at "auto"
    assert run_finished(out, again)
    train(again, out, **quiet)  # reused, not refused
    assert (out / "config.json").read_bytes() == before
    with pytest.raises(IclscopeError, match="train.compile"):
        Trainer(load_config(None, SMALL + ["train.sequences=160", "train.compile=true"]), out, **quiet)
    assert (out / "config.json").read_bytes() == before
    longer = load_config(None, SMALL + ["train.sequences=96000"])  # 12,000 steps: "auto" would compile
    t = Trainer(longer, out, **quiet)  # an extension of the old run
    try:
        assert t._compiled is None
    finally:
        t.close()
    extended = json.loads((out / "config.json").read_text())
    assert extended["train"]["sequences"] == 96000 and "compile" not in extended["train"]
