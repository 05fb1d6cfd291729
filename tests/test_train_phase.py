"""The phase-change detector on synthetic loss curves: every transition (PELT on the log loss, BIC
penalty), the steepest one named, and the single-threshold crossing of the few-shot protocol."""

import math

import numpy as np
import pandas as pd
import pytest

from iclscope.errors import IclscopeError
from iclscope.train import detect_phase_change
from iclscope.train.phase import bic_penalty, detect_transitions, noise_scale, phase_summary


def _ramp(x, a, b, h):
    return h * np.clip((x - a) / (b - a), 0, 1)


def test_phase_change_detector():
    x = np.arange(0, 100) * 1000
    loss = np.where(x < 40_000, 0.7, np.where(x < 50_000, 0.7 - (x - 40_000) / 10_000 * 0.69, 0.01))
    loss = loss + 0.01 * np.sin(x)  # a little noise
    pc = detect_phase_change(x, loss, threshold=0.4 * math.log(2))
    assert 44_000 <= pc["sequences"] <= 47_000
    assert 40_000 <= pc["steepest_sequences"] <= 50_000
    assert pc["plateau_loss"] == pytest.approx(0.7, abs=0.02)
    assert pc["method"] == "threshold"
    assert detect_phase_change(x, np.full(100, 0.7), threshold=0.3) is None


def _two_drops(seed=0, noise=0.03):
    """The token testbed's shape: a fast initial fall, a plateau, a drop at 1200-1600, a bigger one at
    2000-2800 (steps; 10 steps per evaluation, 64 sequences per step)."""
    rng = np.random.default_rng(seed)
    steps = np.arange(0, 4000, 10)
    z = (math.log(4.4) - _ramp(steps, 0, 200, math.log(4.4 / 2.3)) - _ramp(steps, 1200, 1600, 0.8)
         - _ramp(steps, 2000, 2800, 1.2) + rng.normal(0, noise, len(steps)))
    return steps * 64, np.exp(z), steps


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_transitions_found_and_steepest_named(seed):
    seqs, loss, steps = _two_drops(seed)
    tr = detect_transitions(seqs, loss, steps)
    assert len(tr) == 2, tr
    a, b = tr
    assert 1150 <= a["start_step"] <= 1300 and 1500 <= a["end_step"] <= 1650 and 1200 <= a["step"] <= 1600
    assert 1950 <= b["start_step"] <= 2100 and 2700 <= b["end_step"] <= 2850 and 2000 <= b["step"] <= 2800
    assert a["loss_before"] == pytest.approx(2.3, rel=0.08) and a["loss_after"] == pytest.approx(2.3 * math.exp(-0.8), rel=0.08)
    assert b["loss_after"] == pytest.approx(2.3 * math.exp(-2.0), rel=0.1)
    assert a["sequences"] == a["step"] * 64
    # the first drop falls 0.8 in 400 steps, the second 1.2 in 800: the first is the steepest
    assert [t["steepest"] for t in tr] == [True, False]
    pc = detect_phase_change(seqs, loss, steps)
    assert pc["method"] == "steepest transition" and pc["transition"] == 0 and pc["step"] == a["step"]
    assert pc["threshold"] is None and pc["drop_start_sequences"] == a["start_sequences"]
    # the threshold protocol is still there, and says which transition its crossing lies in
    pt = detect_phase_change(seqs, loss, steps, threshold=1.0)
    assert pt["method"] == "threshold" and 2000 <= pt["step"] <= 2800 and pt["transition"] == 1


def test_one_drop_is_one_transition():
    x = np.arange(200) * 100
    rng = np.random.default_rng(3)
    loss = np.exp(math.log(0.7) - _ramp(x, 8000, 9000, 3.0) + rng.normal(0, 0.02, 200))
    tr = detect_transitions(x, loss)
    assert len(tr) == 1 and tr[0]["steepest"] and 8000 <= tr[0]["sequences"] <= 9000
    assert tr[0]["loss_before"] == pytest.approx(0.7, rel=0.05)
    # a sharp drop (within one evaluation) is found as well
    sharp = np.exp(np.where(x < 10_000, math.log(0.7), math.log(0.05)) + rng.normal(0, 0.02, 200))
    tr = detect_transitions(x, sharp)
    assert len(tr) == 1 and 9_900 <= tr[0]["sequences"] <= 10_000 and tr[0]["loss_after"] == pytest.approx(0.05, rel=0.05)


@pytest.mark.parametrize("seed", range(3))
def test_flat_or_steadily_decaying_noisy_curve_has_no_transition(seed):
    rng = np.random.default_rng(seed)
    x = np.arange(200) * 50
    flat = 0.69 * np.exp(rng.normal(0, 0.05, 200))
    assert detect_transitions(x, flat) == [] and detect_phase_change(x, flat) is None
    decay = (1 + x / 1000) ** -0.3 * np.exp(rng.normal(0, 0.03, 200))  # a power law: no abrupt fall
    assert detect_transitions(x, decay) == []
    s = phase_summary(x, flat, threshold=0.4 * math.log(2))
    assert s == {"transitions": [], "phase_change": None}


def test_penalty_rule_and_bad_input():
    rng = np.random.default_rng(0)
    z = np.linspace(0, -1, 1000) + rng.normal(0, 0.1, 1000)
    assert noise_scale(z) == pytest.approx(0.1, rel=0.1)  # the trend does not count as noise
    assert bic_penalty(z) == pytest.approx(3 * noise_scale(z) ** 2 * math.log(1000))
    with pytest.raises(IclscopeError, match="min_fall"):
        detect_transitions(np.arange(10), np.ones(10), min_fall=1.5)
    with pytest.raises(IclscopeError, match="one length"):
        detect_transitions(np.arange(10), np.ones(9))
    assert detect_transitions(np.arange(4), np.ones(4)) == []


def test_real_training_metrics_table(tmp_path):
    """A short real run of the tiny few-shot trainer: the detector runs on its metrics table and agrees
    with itself (every transition inside the run, one steepest, the phase change one of them)."""
    from iclscope.train import Trainer, load_config

    cfg = load_config(None)
    cfg["train"].update({"sequences": 64 * 40, "seeds": [0], "threads": 1})
    cfg["eval"].update({"every": 2, "batch": 32})
    cfg["model"].update({k: v for k, v in {"d_model": 32}.items() if k in cfg["model"]})
    Trainer(cfg, tmp_path / "run").train()
    df = pd.read_csv(tmp_path / "run" / "metrics.csv")
    s = phase_summary(df.sequences, df.train_loss, df.step)
    assert all(df.sequences.min() <= t["sequences"] <= df.sequences.max() for t in s["transitions"])
    assert sum(t["steepest"] for t in s["transitions"]) == (1 if s["transitions"] else 0)
    assert (s["phase_change"] is None) == (not s["transitions"])
