"""``iclscope demo``: the main job on built-in defaults, nothing downloaded.

1. The head interface: load a model, record every head on repeated random token sequences, mean-ablate
   each head's final-token output (all heads in one batched forward pass, one head per batch row),
   measure how much each changes the next-token distribution, then ablate the top heads together.
2. The training lab: a short few-shot classification run (the reference model and data, with a larger
   learning rate so that it fits in a demo) that shows the plateau near ln 2, the abrupt phase change,
   and the last-layer heads turning into induction heads; then the additivity of those heads.
3. The head atlas on a model worth analysing with no download: a small token LM trained on a multi-task
   ICL mixture (the testbed), scored for induction and FV heads, with the ablation study showing that
   FV heads carry novel-query accuracy and induction heads carry copying; then the same scores at every
   checkpoint: when each kind of head forms and whether FV heads were induction heads first.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch

from .. import Ablate, load
from ..data.synthetic import repeated_random_tokens
from ..report import Finding, ResultsDir, run_metadata, write_report
from ..report.figures import head_heatmap


def kl_from(clean_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || intervened) per row. clean_logp, logits: (B, vocab) -> (B,)."""
    logp = logits.float().log_softmax(-1)
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1)


DEMO_TRAIN = ["train.lr=1e-4", "train.sequences=120000", "eval.every=50", "eval.checkpoint_every=500"]


def run_demo(out: str | Path = "results/demo", model_spec: str = "random:gpt2", n_seqs: int = 16,
             half: int = 20, top_k: int = 3, seed: int = 0, train: bool = True, log=print) -> dict:
    """The demo into ``out`` (a ``ResultsDir``: a non-empty folder iclscope did not make is refused
    untouched); the model is loaded before anything is written; the finished marker is written last."""
    t0 = time.time()
    model = load(model_spec)  # a bad spec is refused before anything is written
    out = Path(out)
    with ResultsDir(out, {"command": "demo", "model": str(model_spec), "seed": seed, "train": bool(train)},
                    command="demo") as res:
        summary = head_interface_demo(out / "heads", model_spec, n_seqs, half, top_k, seed, log, model=model)
        if train:
            summary["training"] = training_demo(out / "training", log)
            summary["testbed"] = testbed_demo(out / "testbed", log)
        write_demo_report(res.file("report.html"), out, summary, run_metadata(
            started=t0, model=str(model_spec), seeds=[seed], sequences_per_check=n_seqs))
        res.write_json("summary.json", summary)
        res.mark_finished()
    log(f"demo report: {out / 'report.html'}")
    return summary


def _heads_names(hs) -> str:
    return ", ".join(f"L{int(a)}H{int(b)}" for a, b in hs) or "none"


def demo_findings(summary: dict, random_ci: dict | None = None) -> list[Finding]:
    """The demo's story in findings: when the testbed's heads form and which, which kind of head carries
    which route (the ablation, against random heads), the phase change, how the trained heads share the
    work; without training, the head interface's check. ``random_ci``: {"task" / "copy": (low, high)}, the
    random heads' t interval at the ablated fraction (from the testbed atlas's ablation.csv)."""
    out = []
    tb = summary.get("testbed")
    if tb:
        st = tb.get("story", {})
        fb = st.get("formation_baseline", {})
        for kind, name in (("induction", "induction"), ("fv", "FV")):
            step = st.get(f"{kind}_heads_form_step")
            b = fb.get(kind) or {}
            top = tb.get("top_induction" if kind == "induction" else "top_fv", [])
            out.append(Finding(
                f"The testbed's {name} heads ({_heads_names(top)}) form "
                + (f"at step {step}" if step is not None else "never for good")
                + f" (best {name} score at half its final value, for good); the rise {b.get('verdict', 'has no baseline')}.",
                value=b.get("rise"), within_noise=b.get("p_random_ge_observed") is None or b["p_random_ge_observed"] >= 0.05,
                baseline=None if not b.get("random_95") else
                f"random checkpoint orders: 95 % {b['random_95'][0]:.3g} to {b['random_95'][1]:.3g}"))
        frac = float(tb.get("ablation_at", 0))
        for kind, name, route, accs in (("fv", "FV", "novel-query (FV route)", tb.get("task_acc", {})),
                                        ("induction", "induction", "copying (repeated query)", tb.get("copy_acc", {}))):
            if kind not in accs or "random" not in accs:
                continue
            ci = (random_ci or {}).get("task" if kind == "fv" else "copy")
            out.append(Finding(
                f"Ablating the top {100 * frac:.0f} % of heads by {name} score leaves {route} accuracy at {accs[kind]:.2f}"
                f" (by the other score: {accs['induction' if kind == 'fv' else 'fv']:.2f}).",
                value=accs[kind], baseline=f"random heads: {accs['random']:.2f}"
                + (f" (95 % t interval {ci[0]:.2f} to {ci[1]:.2f})" if ci else ""),
                within_noise=bool(ci and ci[0] <= accs[kind] <= ci[1])))
    tr = summary.get("training")
    if tr:
        pc = tr.get("phase_change")
        out.append(Finding(
            (f"The few-shot classification run has an abrupt phase change at {pc['sequences']:,} sequences (step "
             f"{pc['step']}): the loss falls from a plateau of {pc['plateau_loss']:.3f} (ln 2 = 0.693) to "
             f"{pc['final_loss']:.3g}; {tr['heads_strength_above_0.3']} heads end with induction strength > 0.3.")
            if pc else "The few-shot classification run shows no phase change.",
            value=None if not pc else pc["plateau_loss"], baseline="ln 2 = 0.693 (chance on two labels)"))
        add = tr.get("additivity")
        if add:
            out.append(Finding(
                f"The trained last-layer heads share the work: the strongest head alone reaches accuracy "
                f"{add['max_acc_one_head_alone']:.2f}; ablating any one head leaves at least "
                f"{add['min_acc_ablating_one_head']:.2f}.", value=add["min_acc_ablating_one_head"]))
    h = {k: summary.get(k) for k in ("kl_top_together", "p_next_clean", "p_next_ablated", "batched_vs_single_pass_diff")}
    if h["kl_top_together"] is not None:
        out.append(Finding(
            f"Head interface on {summary.get('model')}: all {summary.get('n_heads_total')} heads mean-ablated in one "
            f"batched pass agree with single-head passes to {abs(h['batched_vs_single_pass_diff']):.1e}; ablating the "
            f"top {len(summary.get('top_heads', []))} together changes P(repeated next token) from "
            f"{h['p_next_clean']:.4f} to {h['p_next_ablated']:.4f}.", value=h["kl_top_together"],
            baseline="KL of the next-token distribution (a random model: near 0)"))
    return out


def _random_ci(atlas: Path) -> dict | None:
    """The random heads' t interval at the demo's ablated fraction, task and copying prompts."""
    f = atlas / "ablation.csv"
    if not f.exists():
        return None
    from .atlas.ablation import ablation_summary

    abl = pd.read_csv(f, dtype={"task": str, "ranking": str})
    hi = abl.fraction.max()
    out = {}
    for key, part in (("task", abl[~abl.task.str.startswith("copy:")]), ("copy", abl[abl.task.str.startswith("copy:")])):
        if len(part):
            r = ablation_summary(part)
            r = r[(r.ranking == "random") & (r.fraction == hi)]
            if len(r) and pd.notna(r.ci_low.iloc[0]):
                out[key] = (float(r.ci_low.iloc[0]), float(r.ci_high.iloc[0]))
    return out


def write_demo_report(path: Path, out: Path, summary: dict, metadata: dict) -> Path:
    """The demo's one page: the testbed's heads form (when, which), which kind of head matters for which
    route (the ablation), the phase change and how its heads share the work; the head interface's check
    last (a table, no figure: on a random model its KL values are ~1e-5 and show nothing)."""
    tb, tr = summary.get("testbed"), summary.get("training")
    sections = []
    if tb:
        sections += [
            {"heading": "1. The testbed's heads form", "text": "A 4-layer token LM trained on a multi-task ICL "
             "mixture; its induction and FV scores at every checkpoint.", "figure": out / "testbed" / "story" / "story.png"},
            {"heading": "2. Which kind of head matters for which route", "text": "The top heads of each kind "
             "mean-ablated: FV heads carry novel-query accuracy, induction heads carry copying, when the "
             "curves separate from the random heads.",
             "figures": [out / "testbed" / "atlas" / "ablation.png", out / "testbed" / "atlas" / "induction_vs_fv.png"]}]
    if tr:
        sections += [
            {"heading": "3. The phase change", "text": "A 2-layer attention-only transformer on few-shot "
             "classification: the loss plateau near ln 2, the abrupt drop, and the last-layer heads turning "
             "into induction heads.", "figure": out / "training" / "phase_change.png"},
            {"heading": "4. How the trained heads share the work", "text": "Each last-layer head alone, heads "
             "added back strongest first, and each head ablated alone (without the run's clamps).",
             "figure": out / "training" / "additivity" / "additivity.png"}]
    top = pd.DataFrame([{"layer": a, "head": b} for a, b in summary.get("top_heads", [])])
    sections.append({"heading": f"{len(sections) + 1}. The head interface" if sections else "The head interface",
                     "text": "Every head recorded and mean-ablated at the final token of repeated random tokens in one "
                             "batched forward pass, checked against a single-head pass; the heads with the largest "
                             "effect on the next-token distribution:", "table": top if len(top) else None})
    return write_report(path, "iclscope demo", sections,
                        findings=demo_findings(summary, _random_ci(out / "testbed" / "atlas") if tb else None),
                        metadata=metadata)


def training_demo(out: Path, log=print) -> dict:
    from ..report.figures import training_story
    from ..train import load_config, train as train_run
    from .lab import additivity

    log(f"\n== training lab: few-shot classification, {DEMO_TRAIN} -> {out}/")
    [s] = train_run(load_config(None, DEMO_TRAIN), out, log=log)
    df = pd.read_csv(out / "metrics.csv")
    fig = training_story(out / "phase_change.png", df, s["phase_change"],
                         title="2-layer attention-only transformer on few-shot classification (lr 1e-4)")
    pc = s["phase_change"]
    log(f"phase change: {'at ' + format(pc['sequences'], ',') + ' sequences (step ' + str(pc['step']) + '), plateau ' + format(pc['plateau_loss'], '.3f') if pc else 'none'}; "
        f"final train loss {s['final']['train_loss']:.4f}; {s['heads_strength_above_0.3']} heads with induction strength > 0.3")
    add = additivity(out, n=1024, log=lambda *a: None)
    log(f"additivity: strongest head alone acc {add['max_acc_one_head_alone']:.3f}; ablating any one head leaves "
        f"acc >= {add['min_acc_ablating_one_head']:.3f}; loss with 1..{len(add['loss_by_heads_added']) - 1} heads: "
        f"{', '.join(f'{v:.3g}' for v in add['loss_by_heads_added'][1:])}")
    log(f"figure: {fig}")
    return {"phase_change": pc, "final": s["final"], "heads_strength_above_0.3": s["heads_strength_above_0.3"],
            "additivity": add}


def testbed_demo(out: Path, log=print) -> dict:
    """Train the token testbed (reference section C; ~3.5 minutes on one core), then its head atlas."""
    from ..train import load_config, train as train_run
    from .atlas import run_atlas

    log(f"\n== token testbed: a 4-layer LM on a multi-task ICL mixture -> {out}/")
    [s] = train_run(load_config("testbed"), out, log=log)
    f = s["final"]
    log(f"trained: accuracy with a repeated query {f['stored_repeat_acc']:.3f}, novel query {f['stored_novel_acc']:.3f}, "
        f"fresh mapping (copying only) {f['fresh_repeat_acc']:.3f}")
    final = sorted((out / "checkpoints").glob("step_*"))[-1]
    a = run_atlas(str(final), out / "atlas", log=lambda *x: None)
    top = a["top_heads"]
    fv = a["function_vectors"]
    abl, cop = a["accuracy_by_fraction"], a["copy_accuracy_by_fraction"]
    hi = max(abl["fv"], key=float)
    log(f"atlas: top induction heads {top['induction']}, top FV heads {top['fv']}, overlap {top['overlap']}")
    log(f"ablating the top {float(hi):.0%} of heads: by FV score -> novel-query accuracy {abl['fv'][hi]:.2f}, "
        f"copying {cop['fv'][hi]:.2f}; by induction score -> novel-query {abl['induction'][hi]:.2f}, "
        f"copying {cop['induction'][hi]:.2f} (random heads: {abl['random'][hi]:.2f} / {cop['random'][hi]:.2f})")
    log(f"function vector at layer {fv['best_layer']}: zero-shot accuracy {fv['zero_shot_acc']:.2f} -> {fv['with_fv_acc']:.2f}")
    from .dynamics import testbed_story
    story = testbed_story(out, out / "story", reuse=[out / "atlas"], log=lambda *x: None)
    log("over training: " + story.get("text", "").replace("\n", "\n  "))
    return {"final": f, "story": {k: v for k, v in story.items() if k != "text"}, "top_induction": top["induction"], "top_fv": top["fv"], "overlap": top["overlap"],
            "function_vector": fv, "ablation_at": hi, "task_acc": {k: v[hi] for k, v in abl.items()},
            "copy_acc": {k: v[hi] for k, v in cop.items()}}


def head_interface_demo(out: Path, model_spec: str, n_seqs: int, half: int, top_k: int, seed: int, log=print,
                        model=None) -> dict:
    t0 = time.time()
    model = model or load(model_spec)
    with ResultsDir(out, {"command": "demo-heads", "model": str(model_spec), "n_seqs": n_seqs, "half": half,
                          "top_k": top_k, "seed": seed}, command="demo") as res:
        return _heads(res, model, model_spec, n_seqs, half, top_k, seed, log, t0)


def _heads(res, model, model_spec, n_seqs, half, top_k, seed, log, t0) -> dict:
    log(f"loaded {model_spec}: {model}")
    g = torch.Generator().manual_seed(seed)
    tokens = repeated_random_tokens(n_seqs, half, model.vocab_size, g, bos_id=model.bos_token_id)  # (N, 1+2*half)
    with torch.no_grad():
        clean, cache = model.run(tokens, record=["z", "pattern"])
    log(f"recorded z {tuple(cache.site('z', 0).shape)} and patterns {tuple(cache.site('pattern', 0).shape)} "
        f"in each of {model.n_layers} layers")
    clean_logp = clean[:, -1].float().log_softmax(-1)  # (N, vocab)
    means = torch.stack([cache.site("z", layer)[:, -1].mean(0) for layer in range(model.n_layers)])  # (L, H, D)

    heads = [(layer, h) for layer in range(model.n_layers) for h in range(model.n_heads)]
    # one forward pass: row block i mean-ablates head i at the final position
    batch = tokens.repeat(len(heads), 1)
    rows = [i * n_seqs + b for i in range(len(heads)) for b in range(n_seqs)]
    per_row_heads = [h for h in heads for _ in range(n_seqs)]
    with torch.no_grad():
        logits = model.run(batch, interventions=[Ablate(per_row_heads, how="mean", mean=means, positions=-1,
                                                        rows=rows)])[0]
    kl = kl_from(clean_logp.repeat(len(heads), 1), logits[:, -1]).view(len(heads), n_seqs).mean(1)
    # check the batched pass against one pass for the head with the largest effect
    best = int(kl.argmax())
    with torch.no_grad():
        single = model.run(tokens, interventions=[Ablate([heads[best]], how="mean", mean=means, positions=-1)])[0]
    check = float(kl_from(clean_logp, single[:, -1]).mean() - kl[best])
    df = pd.DataFrame({"layer": [h[0] for h in heads], "head": [h[1] for h in heads], "kl_mean_ablation": kl.tolist()})
    df["z_norm"] = [float(cache.site("z", l)[:, -1, h].norm(dim=-1).mean()) for l, h in heads]
    res.write_table("heads.csv", df)
    top = df.sort_values("kl_mean_ablation", ascending=False).head(top_k)
    top_heads = list(zip(top.layer, top["head"]))
    with torch.no_grad():
        together = model.run(tokens, interventions=[Ablate(top_heads, how="mean", mean=means, positions=-1)])[0]
    kl_top = float(kl_from(clean_logp, together[:, -1]).mean())
    next_tok = tokens[:, -half]  # the token that follows in the repeated half: the induction answer
    p_clean = clean_logp.exp()[torch.arange(n_seqs), next_tok].mean().item()
    p_ablated = together[:, -1].float().softmax(-1)[torch.arange(n_seqs), next_tok].mean().item()
    # written for reading alongside heads.csv; not shown in the report (on a random model it shows nothing)
    head_heatmap(df, "kl_mean_ablation", res.file("kl_mean_ablation.png"),
                 title=f"{model_spec}: KL of next-token distribution when a head is mean-ablated")
    summary = {"model": model_spec, "n_heads_total": len(heads), "top_heads": [list(map(int, h)) for h in top_heads],
               "kl_top_together": kl_top, "p_next_clean": p_clean, "p_next_ablated": p_ablated,
               "batched_vs_single_pass_diff": check, "seconds": round(time.time() - t0, 2)}
    write_report(res.file("report.html"), f"iclscope demo: {model_spec}", [
        {"heading": "Per-head effect of mean ablation (final token)", "text": "KL(clean || ablated) of the "
         "next-token distribution when each head's final-token output is replaced by its mean.", "table": df},
    ], findings=demo_findings(summary), metadata=run_metadata(started=t0, model=str(model_spec), seeds=[seed],
                                                               sequences=n_seqs))
    log(df.sort_values("kl_mean_ablation", ascending=False).head(8).to_string(index=False))
    log(f"all {len(heads)} heads ablated in one batched pass; a single-head pass agrees to {abs(check):.2e}")
    log(f"ablating the top {top_k} heads {top_heads} together: KL {kl_top:.4g}; "
        f"P(repeated next token) {p_clean:.4f} -> {p_ablated:.4f}")
    res.write_json("summary.json", summary)
    res.mark_finished()
    log(f"results in {res.path}/ (heads.csv, kl_mean_ablation.png, report.html)")
    return summary
