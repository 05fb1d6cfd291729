"""The phase-change detector on synthetic loss curves."""

import math

import numpy as np
import pytest

from iclscope.train import detect_phase_change


def test_phase_change_detector():
    x = np.arange(0, 100) * 1000
    loss = np.where(x < 40_000, 0.7, np.where(x < 50_000, 0.7 - (x - 40_000) / 10_000 * 0.69, 0.01))
    loss = loss + 0.01 * np.sin(x)  # a little noise
    pc = detect_phase_change(x, loss, threshold=0.4 * math.log(2))
    assert 44_000 <= pc["sequences"] <= 47_000
    assert 40_000 <= pc["steepest_sequences"] <= 50_000
    assert pc["plateau_loss"] == pytest.approx(0.7, abs=0.02)
    assert detect_phase_change(x, np.full(100, 0.7), threshold=0.3) is None


