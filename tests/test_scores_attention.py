"""Attention scores against heads whose patterns are clamped to the ideal ones."""

import torch

from iclscope import ClampPattern
from iclscope.data.synthetic import repeated_random_tokens
from iclscope.scores import duplicate_targets, duplicate_token_scores, induction_scores, prev_token_scores

from conftest import make_model


def test_clamped_ideal_heads_score_one_and_others_less():
    model = make_model("gpt2")
    tokens = repeated_random_tokens(8, 12, model.vocab_size, torch.Generator().manual_seed(0), bos_id=256)
    with model.intervene([ClampPattern([(1, 2)], "induction"), ClampPattern([(0, 1)], "prev_token")]):
        ind = induction_scores(model, tokens)
        prev = prev_token_scores(model, tokens)
    assert ind.shape == (3, 4)
    assert abs(float(ind[1, 2]) - 1.0) < 1e-5 and float(ind[1, 3]) < 0.5
    assert abs(float(prev[0, 1]) - 1.0) < 1e-5 and float(prev[0, 0]) < 0.5


def test_only_positions_with_an_earlier_occurrence_count():
    ids = torch.tensor([[5, 6, 7, 5, 6, 9]])
    assert duplicate_targets(ids).tolist() == [[-1, -1, -1, 0, 1, -1]]
    model = make_model("tiny")
    with model.intervene([ClampPattern([(0, 0)], torch.eye(6))]):  # attend to self: never the duplicate
        dup = duplicate_token_scores(model, ids)
    assert float(dup[0, 0]) == 0.0
