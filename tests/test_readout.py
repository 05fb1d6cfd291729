"""iclscope.readout against plainly written loops."""

import math

import pytest
import torch

from iclscope.readout import (answer_correct, answer_loss, answer_prob, answer_rank, induction_strength,
                              per_member_mean)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 9, generator=g)
    x[0, 2] = x[0, 7] = x[0].max() + 1  # a tie at the top: the lower id (2) is first
    x[1, 4] = x[1, 5] = x[1, 6] = 0.25  # a tie in the middle
    return x


ANSWERS = torch.tensor([7, 5, 0, 3, 8, 1])


def test_answer_rank_and_correct(logits):
    ranks = answer_rank(logits, ANSWERS)
    assert ranks.dtype == torch.int64 and ranks.shape == (6,)
    for b in range(6):
        a = int(ANSWERS[b])
        want = sum(1 for v in range(9) if logits[b, v] > logits[b, a] or (logits[b, v] == logits[b, a] and v < a))
        assert int(ranks[b]) == want
    assert int(ranks[0]) == 1 and int(answer_rank(logits, torch.tensor([2, 4, 0, 0, 0, 0]))[0]) == 0
    assert int(ranks[1]) == sum(1 for v in range(9) if logits[1, v] > 0.25) + 1  # behind the tied token 4
    assert answer_correct(logits, ANSWERS).tolist() == (ranks == 0).tolist()
    top = logits.argmax(-1)
    assert answer_correct(logits, top).all() and (answer_rank(logits, top) == 0).all()


def test_answer_prob_and_loss(logits):
    p = answer_prob(logits.half(), ANSWERS)
    loss = answer_loss(logits.half(), ANSWERS)
    assert p.dtype == loss.dtype == torch.float32
    for b in range(6):
        row = [float(v) for v in logits[b].half().float()]
        z = sum(math.exp(v) for v in row)
        want = math.exp(row[int(ANSWERS[b])]) / z
        assert float(p[b]) == pytest.approx(want, rel=1e-5)
        assert float(loss[b]) == pytest.approx(-math.log(want), rel=1e-5)
    mean = answer_loss(logits, ANSWERS, reduction="mean")
    assert mean.shape == () and float(mean) == pytest.approx(float(answer_loss(logits, ANSWERS).mean()))


def test_per_member_mean():
    x = torch.arange(24.0).reshape(6, 2, 2)  # R = 3 members of 2 rows
    out = per_member_mean(x, 3)
    assert out.shape == (3, 2, 2)
    for r in range(3):
        want = (x[2 * r] + x[2 * r + 1]) / 2
        assert torch.equal(out[r], want)
    assert torch.equal(per_member_mean(torch.tensor([1.0, 3.0]), 1), torch.tensor([2.0]))


def _plain_strength(pat, correct, wrong, valid):
    B, H, _ = pat.shape
    out = []
    for h in range(H):
        tot, n = 0.0, 0
        for b in range(B):
            if valid is not None and not valid[b]:
                continue
            w = sum(float(pat[b, h, int(j)]) for j in wrong[b]) / len(wrong[b])
            tot += float(pat[b, h, int(correct[b])]) - w
            n += 1
        out.append(tot / max(n, 1))
    return out


def test_induction_strength():
    g = torch.Generator().manual_seed(1)
    pat = torch.rand(8, 3, 7, generator=g).softmax(-1)  # (B, H, T)
    correct = torch.tensor([1, 3, 5, -1, 1, 3, -1, 5])
    wrong = torch.tensor([[3, 5], [1, 5], [1, 3], [-1, -1], [3, 5], [1, 5], [-1, -1], [1, 3]])
    # raw positions, every sequence (additivity's form; -1 is the last key position)
    s = induction_strength(pat, correct, wrong)
    assert s.shape == (3,)
    assert s.tolist() == pytest.approx(_plain_strength(pat, correct, wrong, None), abs=1e-6)
    # clamped positions, invalid sequences skipped, per member (the trainer's form)
    valid = correct >= 0
    s2 = induction_strength(pat, correct.clamp(min=0), wrong.clamp(min=0), valid=valid, groups=2)
    assert s2.shape == (2, 3)
    for r in range(2):
        sl = slice(4 * r, 4 * r + 4)
        want = _plain_strength(pat[sl], correct[sl], wrong[sl], valid[sl])
        assert s2[r].tolist() == pytest.approx(want, abs=1e-6)
    # no valid sequence gives 0; an ideal pattern of strength s gives 2s - 1
    none = torch.zeros(8, dtype=torch.bool)
    assert induction_strength(pat, correct.clamp(min=0), wrong.clamp(min=0), valid=none).abs().max() == 0
    ideal = torch.zeros(2, 1, 5)
    ideal[:, 0, 1], ideal[:, 0, 3] = 0.8, 0.2
    assert induction_strength(ideal, torch.tensor([1, 1]), torch.tensor([[3], [3]])).tolist() == pytest.approx([0.6])
