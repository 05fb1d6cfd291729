"""Role transitions over training: were the final FV heads top induction heads before their FV onset, against
random head sets over the same windows (and the reverse)."""

import pandas as pd
import pytest

from iclscope.experiments import dynamics as dyn


def _long(induction, fv):
    """A heads_over_training table from (checkpoints x heads) score arrays, 2 layers of 4 heads."""
    rows = []
    for c, (ri, rf) in enumerate(zip(induction, fv)):
        for j, (a, b) in enumerate(zip(ri, rf)):
            rows.append({"checkpoint": f"c{c}", "order": c, "step": 10 * c, "layer": j // 4, "head": j % 4,
                         "induction": a, "fv": b})
    return pd.DataFrame(rows)


def test_role_transitions_by_hand():
    z = [0.0] * 8
    # head 5 is the top induction head at checkpoints 0-1, then an FV head; head 6 becomes an FV head
    # at checkpoint 2 without an induction phase; head 1 is an induction head from checkpoint 1 on
    ind = [[0, 0, 0, 0, 0, 0.9, 0, 0], [0, 0.8, 0, 0, 0, 0.9, 0, 0], [0, 0.9, 0, 0, 0, 0.1, 0, 0],
           [0, 0.9, 0, 0, 0, 0.1, 0, 0]]
    fv = [z, z, [0, 0, 0, 0, 0, 0.3, 0.2, 0], [0, 0, 0, 0, 0, 0.3, 0.2, 0]]
    trans, s = dyn.role_transitions(_long(ind, fv), top=2, rel=0.25, n_random=500)
    f = trans[trans.role == "fv"].set_index("head")
    assert sorted(zip(f.layer, f.index)) == [(1, 1), (1, 2)]
    assert f.loc[1, "was_top_induction_before"] and not f.loc[2, "was_top_induction_before"]
    assert f.loc[1, "onset_step"] == 20 and f.loc[1, "first_top_induction_step"] == 0
    assert f.loc[1, "last_top_induction_step"] == 10 and f.loc[1, "checkpoints_as_top_induction_before"] == 2
    r = s["fv_heads_through_induction"]
    assert r["fraction"] == 0.5 and r["n"] == 2
    # random pairs of heads over the same windows: 2 of 8 heads were ever top induction heads before step 20
    assert 0.1 < r["random_mean"] < 0.4 and 0 <= r["p_random_ge_observed"] <= 1
    # the reverse: the final induction head(s)
    i = trans[trans.role == "induction"]
    assert [(int(a), int(b)) for a, b in zip(i.layer, i["head"])] == [(0, 1)]
    assert not i.was_top_fv_before.iloc[0] and i.onset_step.iloc[0] == 10
    assert s["induction_heads_through_fv"]["fraction"] == 0.0


def test_role_transitions_with_no_fv_heads():
    z = [0.0] * 8
    trans, s = dyn.role_transitions(_long([[0.5] + z[1:]] * 2, [z, z]), top=2, n_random=10)
    assert s["fv_heads_through_induction"]["fraction"] is None
    assert set(trans.role) == {"induction"}


def test_random_scores_claim_no_transition():
    """Scores drawn at random at every checkpoint: neither role transition nor a head formation may be
    called a finding; every headline says it is not distinguishable from the random baseline."""
    import numpy as np

    rng = np.random.default_rng(0)
    C, H = 8, 8
    trans, s = dyn.role_transitions(_long(rng.random((C, H)), rng.random((C, H)) * 0.1), top=2, n_random=500)
    text = dyn.transition_text(s)
    for key in ("fv_heads_through_induction", "induction_heads_through_fv"):
        assert s[key]["p_random_ge_observed"] >= 0.05
        assert s[key]["verdict"] == "not distinguishable from the random baseline"
    assert text.count("not distinguishable from the random baseline") == 2 and "beats" not in text
    for kind in ("induction", "fv"):
        b = dyn.transitions.formation_baseline(rng.random(C))
        assert b["verdict"] == "not distinguishable from the random baseline" and b["p_random_ge_observed"] >= 0.05
    story = {"final_max_induction": 0.5, "final_max_fv": 0.1, "induction_heads_form_step": 40, "fv_heads_form_step": 60,
             "formation_baseline": {"induction": dyn.transitions.formation_baseline(rng.random(C)),
                                    "fv": dyn.transitions.formation_baseline(rng.random(C))},
             "fv_heads": [], "role_transitions": s}
    st = dyn.story_text(story)
    assert st.count("not distinguishable from the random baseline") == 4 and "beats" not in st


def test_formation_baseline_against_a_plain_permutation_count():
    """A clear rise beats the baseline; p equals a plainly written exhaustive count over all orders."""
    import itertools

    import numpy as np

    from iclscope.experiments.dynamics.transitions import formation_baseline

    v = [0.0, 0.1, 0.05, 0.08, 0.9, 1.0, 0.95]

    def rise(seq):
        return max(np.mean(seq[c:]) - np.mean(seq[:c]) for c in range(1, len(seq)))

    obs = rise(v)
    exact = np.mean([rise(list(p)) >= obs - 1e-12 for p in itertools.permutations(v)])
    b = formation_baseline(v, n_random=4000)
    assert b["rise"] == pytest.approx(obs) and b["p_random_ge_observed"] == pytest.approx(exact, abs=0.015)
    assert b["verdict"] == "beats the random baseline"
    assert formation_baseline([1.0, 2.0])["rise"] is None
