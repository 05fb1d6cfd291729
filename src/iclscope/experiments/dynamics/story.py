"""The testbed's story: on a training-lab run of the token testbed, when do induction heads form, when
do FV heads form, did the FV heads pass through an induction phase, and how do repeated-query (copying)
and novel-query (FV route) accuracy rise? ``testbed_story`` runs ``run_dynamics`` and tells the result in
numbers and words (story.json, story.png, story.html); nothing in the text is assumed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ...report import write_report
from ...report import Finding
from ...report.figures import save_figure, short_name
from ...report.figures.common import COLORS
from .command import dynamics_findings, run_dynamics
from .figures import METRIC_LABELS
from .transitions import formation_baseline, transition_text, verdict


def _first_step(steps, values, level: float):
    """The first step at which ``values`` reaches ``level`` and stays there to the end, or None."""
    v = np.asarray(values, dtype=float)
    s = np.asarray(steps)
    ok = v >= level
    if not ok[-1]:
        return None
    bad = np.flatnonzero(~ok)
    i = bad[-1] + 1 if len(bad) else 0
    return int(s[i])


def testbed_story(run_dir: str | Path, out: str | Path, checkpoints=None, top: int | None = None,
                  rel: float = 0.25, reuse: Sequence[str | Path] = (), log=print, **settings) -> dict:
    """The testbed's whole story: ``run_dynamics`` on a training-lab run of the token testbed, then when
    induction heads form, when FV heads form, whether FV heads passed through an induction phase, and
    how repeated-query and novel-query accuracy rise (from the run's metrics.csv). Writes the dynamics
    files plus story.json, story.png and story.html into ``out``. Returns the story (a dict)."""
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir).expanduser()
    story: dict[str, Any] = {}

    def tell(res, dyn):  # runs inside the open dynamics folder, before it is marked finished
        out = res.path
        long = pd.read_csv(out / "heads_over_training.csv")
        ck = pd.read_csv(out / "checkpoints.csv")
        try:
            trans = pd.read_csv(out / "transitions.csv")
        except pd.errors.EmptyDataError:
            trans = pd.DataFrame(columns=["role", "layer", "head"])
        mpath = run_dir / "metrics.csv"
        metrics = pd.read_csv(mpath) if mpath.exists() else None
        story.update({"run": str(run_dir), "checkpoints": len(ck), "top": dyn["transitions"]["top"]})

        # heads: per checkpoint, the best induction / FV score and the mean over the final top heads
        ind_final, fv_final = float(ck.max_induction.iloc[-1]), float(ck.max_fv.iloc[-1])
        story["final_max_induction"], story["final_max_fv"] = float(ind_final), float(fv_final)
        story["induction_heads_form_step"] = _first_step(ck.step, ck.max_induction, 0.5 * ind_final)
        story["fv_heads_form_step"] = _first_step(ck.step, ck.max_fv, 0.5 * fv_final)
        story["formation_baseline"] = {"induction": formation_baseline(ck.max_induction),
                                       "fv": formation_baseline(ck.max_fv)}
        if metrics is not None:
            ind_cols = [c for c in metrics if c.startswith("induction_L")]
            if ind_cols:  # the run's own induction score at every evaluation (finer than the checkpoints)
                mx = metrics[ind_cols].max(axis=1)
                story["induction_heads_form_step_metrics"] = _first_step(metrics.step, mx, 0.5 * float(mx.iloc[-1]))
            acc = {}
            for col in METRIC_LABELS:
                if col in metrics:
                    acc[col] = {"final": float(metrics[col].iloc[-1]),
                                "reaches_0.5": _first_step(metrics.step, metrics[col], 0.5),
                                "reaches_0.9": _first_step(metrics.step, metrics[col], 0.9)}
            story["accuracy"] = acc
            if "conflict_copy" in metrics:
                story["conflict_copy_final"] = float(metrics.conflict_copy.iloc[-1])
            if "train_loss" in metrics:
                story["final_train_loss"] = float(metrics.train_loss.iloc[-1])
        story["role_transitions"] = dyn["transitions"]
        fvh = trans[trans.role == "fv"] if len(trans) else pd.DataFrame()
        story["fv_heads"] = [{"head": f"L{int(r.layer)}H{int(r['head'])}", "onset_step": r.onset_step,
                              "final_fv": r.final_fv, "final_induction": r.final_induction,
                              "was_top_induction_before": bool(r.was_top_induction_before),
                              "max_induction_before": r.max_induction_before,
                              "max_induction_before_step": r.max_induction_before_step,
                              "induction_rank_at_max_before": r.induction_rank_at_max_before,
                              "first_top_induction_step": r.first_top_induction_step}
                             for _, r in fvh.iterrows()]
        story["n_heads"] = int(dyn["heads"])
        story["text"] = story_text(story)
        res.write_json("story.json", story)

        # one figure: accuracy conditions, the best head of each kind, the final FV heads' induction scores
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
        a, b, c = axes
        if metrics is not None:
            for col, lab in METRIC_LABELS.items():
                if col in metrics:
                    a.plot(np.maximum(metrics.step, 1), metrics[col], label=lab, lw=1.5)
        a.set_xscale("log")
        a.set_xlabel("training step")
        a.set_ylabel("accuracy")
        a.set_title("what the model can do (metrics.csv)")
        if a.get_legend_handles_labels()[0]:
            a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))
        x = np.maximum(ck.step, 1)
        b.plot(x, ck.max_induction / (ind_final or 1), marker="o", color=COLORS["induction"],
               label=f"best induction score (/ {ind_final:.2f})")
        b.plot(x, ck.max_fv / (fv_final or 1), marker="s", color=COLORS["fv"], label=f"best FV score (/ {fv_final:.3f})")
        for key, col in (("induction_heads_form_step", COLORS["induction"]), ("fv_heads_form_step", COLORS["fv"])):
            if story.get(key):
                b.axvline(story[key], color=col, ls=":", lw=1)
        b.set_xscale("log")
        b.set_xlabel("training step")
        b.set_ylabel("fraction of the final value")
        b.set_title("when each kind of head forms (dotted: half the final value, for good)")
        b.legend()
        for _, r in fvh.iterrows():
            d = long[(long.layer == r.layer) & (long["head"] == r["head"])].sort_values("order")
            line, = c.plot(np.maximum(d.step, 1), d.induction, marker="o", ms=3, label=f"L{int(r.layer)}H{int(r['head'])} induction")
            c.plot(np.maximum(d.step, 1), d.fv / (fv_final or 1), ls="--", color=line.get_color(), lw=1,
                   label=f"L{int(r.layer)}H{int(r['head'])} FV (/ final best)")
        c.set_xscale("log")
        c.set_xlabel("training step")
        c.set_title("the final FV heads: induction score (solid), FV score (dashed)")
        if c.get_legend_handles_labels()[0]:
            c.legend(ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        fig.suptitle(f"testbed story: {short_name(str(run_dir))}")
        save_figure(fig, res.file("story.png"))
        write_report(res.file("story.html"), f"Testbed story: {short_name(str(run_dir))}", [
            {"heading": "What the data show", "text": story["text"], "figure": out / "story.png"},
            {"heading": "Role transitions", "figure": out / "transitions.png", "table": trans if len(trans) else None},
            {"heading": "Score trajectories", "figure": out / "trajectories.png"},
            {"heading": "Every head at every checkpoint", "figure": out / "heatmaps.png"},
            {"heading": "Accuracy", "figure": out / "accuracy.png"},
        ], findings=story_findings(story, ck))

    run_dynamics(out, run=run_dir, checkpoints=checkpoints, top=top, rel=rel, reuse=reuse, log=log, after=tell,
                 **settings)
    log(story["text"])
    return story


def story_findings(s: dict, ck: pd.DataFrame) -> list[Finding]:
    """The story's headline results: when each kind of head forms (against random checkpoint orders), the
    accuracy of each evaluation condition at the end, then the role transitions (``dynamics_findings``)."""
    out = []
    fb = s.get("formation_baseline", {})
    for kind, name, step_key in (("induction", "induction", "induction_heads_form_step"),
                                 ("fv", "FV", "fv_heads_form_step")):
        b = fb.get(kind) or {}
        step = s.get(step_key)
        when = f"at step {step}" if step is not None else "never for good"
        if b.get("rise") is None:
            out.append(Finding(f"{name.capitalize()} heads form {when}; {b.get('verdict', 'no baseline')}.",
                               within_noise=True))
            continue
        out.append(Finding(f"{name[0].upper() + name[1:]} heads form {when} (best score at half its final value, for "
                           f"good); the rise {b['verdict']}.", value=b["rise"],
                           baseline=f"random checkpoint orders: 95 % {b['random_95'][0]:.3g} to {b['random_95'][1]:.3g}",
                           within_noise=b["p_random_ge_observed"] is None or b["p_random_ge_observed"] >= 0.05))
    for col, v in s.get("accuracy", {}).items():
        out.append(Finding(f"{METRIC_LABELS[col][0].upper() + METRIC_LABELS[col][1:]}: final accuracy {v['final']:.2f}; "
                           f"reaches 0.5 for good at {'never' if v['reaches_0.5'] is None else 'step ' + str(v['reaches_0.5'])}.",
                           value=v["final"]))
    out += [f for f in dynamics_findings(s["role_transitions"], ck) if "of the" in f.text]
    return out


def story_text(s: dict) -> str:
    """The testbed story in words, from the numbers (nothing here is assumed)."""
    def st(v):
        return "never (not for good)" if v is None else f"step {v}"

    parts = []
    acc = s.get("accuracy", {})
    if acc:
        parts.append("Accuracy (reaches 0.5 / 0.9 for good): " + "; ".join(
            f"{METRIC_LABELS[c]}: {st(v['reaches_0.5'])} / {st(v['reaches_0.9'])} (final {v['final']:.2f})"
            for c, v in acc.items() if c != "conflict_acc") + ".")
        if "conflict_acc" in acc:
            copy = s.get("conflict_copy_final")
            parts.append(f"Conflict prompts (the matching demonstration's label replaced by a wrong word): at the end "
                         f"the task's answer is predicted in {acc['conflict_acc']['final']:.2f} of them"
                         + (f", the copied wrong word in {copy:.2f}" if copy is not None else "") + ".")
    fb = s.get("formation_baseline", {})

    def against(kind):
        b = fb.get(kind)
        if not b:
            return ""
        if b.get("rise") is None:
            return f" [{b['verdict']}]"
        return (f" [rise over checkpoints {b['rise']:.3g}; the same scores in {b['n_random']} random checkpoint orders: "
                f"95 % {b['random_95'][0]:.3g}-{b['random_95'][1]:.3g}, P(random >= observed) = "
                f"{b['p_random_ge_observed']:.3f}: {b['verdict']}]")

    parts.append(f"Induction heads form (best induction score at half its final {s['final_max_induction']:.2f}, for good) "
                 f"at {st(s['induction_heads_form_step'])}" + against("induction")
                 + (f" (the run's own per-evaluation induction score: {st(s['induction_heads_form_step_metrics'])})"
                    if "induction_heads_form_step_metrics" in s else "")
                 + f"; FV heads form (best FV score at half its final {s['final_max_fv']:.3f}, for good) at "
                   f"{st(s['fv_heads_form_step'])}" + against("fv") + ".")
    fv_b = fb.get("fv")
    if fv_b and fv_b.get("p_random_ge_observed") is not None and verdict(fv_b["p_random_ge_observed"]) != "beats the random baseline" \
            and s.get("fv_heads"):
        parts.append("The FV score does not rise beyond its random-order baseline, so the FV onsets below are "
                     "descriptive only (not distinguishable from the random baseline).")
    def missing(v):
        return v is None or (isinstance(v, float) and math.isnan(v))

    for h in s.get("fv_heads", []):
        peak = ("n/a (an FV head from the first checkpoint)" if missing(h["max_induction_before"]) else
                f"{h['max_induction_before']:.2f} at step {h['max_induction_before_step']:g} (rank "
                f"{int(h['induction_rank_at_max_before'])} of {s.get('n_heads', '?')} heads then)")
        parts.append(f"FV head {h['head']}: FV onset (first in the top FV set) at step {h['onset_step']:g}; final FV "
                     f"{h['final_fv']:.3f}, final induction {h['final_induction']:.2f}; highest induction score before "
                     f"its onset {peak}; "
                     + ("it was a top induction head before (first at step "
                        f"{h['first_top_induction_step']:g})." if h["was_top_induction_before"]
                        else f"it was never among the top {s.get('top')} induction heads before its onset."))
    parts.append(transition_text(s["role_transitions"]))
    return "\n\n".join(parts)
