"""``iclscope <command>``: the command-line interface. ``iclscope --help`` lists the commands."""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args) -> int:
    from .experiments.demo import run_demo

    run_demo(out=args.out, model_spec=args.model, seed=args.seed, train=not args.no_train)
    return 0


def _cmd_train(args) -> int:
    from .train import load_config, train

    cfg = load_config(args.config, args.set or [])
    summaries = train(cfg, args.out, progress=not args.quiet)
    for s in summaries:
        pc = s["phase_change"]
        when = (f"phase change at step {pc['step']} ({pc['sequences']:,} sequences; steepest at "
                f"{pc['steepest_sequences']:,})" if pc else "no phase change")
        f = s["final"]
        if "stored_novel_acc" in f:  # the token testbed
            detail = (f"accuracy: repeated query {f['stored_repeat_acc']:.3f}, novel query {f['stored_novel_acc']:.3f}, "
                      f"fresh mapping (copying) {f['fresh_repeat_acc']:.3f}")
        else:
            detail = (f"heldout_classes acc {f.get('heldout_classes_acc', float('nan')):.3f}; "
                      f"{s['heads_strength_above_0.3']} last-layer heads with induction strength > 0.3")
        print(f"seed {s['seed']}: final train loss {f.get('train_loss', float('nan')):.4f}, {detail}; {when}")
    print(f"results in {args.out}/")
    return 0


def _cmd_additivity(args) -> int:
    from .experiments.lab import additivity

    additivity(args.run, out=args.out, n=args.n, how=args.how)
    return 0


def _seeds(text: str) -> list[int]:
    from .errors import IclscopeError
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise IclscopeError(f"--seeds {text!r}: expected a comma-separated list of integers") from None


def _cmd_clamp_sweep(args) -> int:
    from .experiments.lab import clamp_sweep

    conditions = args.conditions.split(",") if args.conditions else None
    clamp_sweep(args.config, out=args.out, seeds=_seeds(args.seeds), sequences=int(float(args.sequences)),
                conditions=conditions, workers=args.workers)
    return 0


def _cmd_data_sweep(args) -> int:
    from .experiments.lab import data_sweep

    data_sweep(args.config, vary=args.vary, out=args.out, seeds=_seeds(args.seeds),
               sequences=int(float(args.sequences)) if args.sequences else None, workers=args.workers)
    return 0


def _cmd_scores(args) -> int:
    from .experiments.atlas import run_scores

    run_scores(args.model, args.out, tasks_dir=args.tasks, revision=args.revision, dtype=args.dtype,
               device=args.device, k=args.shots, n_clean=args.n_clean, n_corrupt=args.n_corrupt)
    return 0


def _cmd_atlas(args) -> int:
    from .experiments.atlas import run_atlas

    fractions = [float(f) / 100 for f in args.fractions.split(",")]
    run_atlas(args.model, args.out, tasks_dir=args.tasks, revision=args.revision, dtype=args.dtype,
              device=args.device, device_map=args.device_map, k=args.shots, n_clean=args.n_clean,
              n_corrupt=args.n_corrupt, n_eval=args.n_eval, fractions=fractions, how=args.how,
              positions=args.positions, random_seeds=args.random_seeds)
    return 0


def _cmd_tasks(args) -> int:
    from .tasks import build_tasks

    summary = build_tasks(args.out, names=args.names.split(",") if args.names else None)
    for name, n in summary.items():
        print(f"{name:28s} {n}")
    print(f"task files in {args.out}/ (sources and licenses in SOURCES.md)")
    return 0


def _cmd_dynamics(args) -> int:
    from .experiments.dynamics import run_dynamics, testbed_story

    kw = dict(checkpoints=args.checkpoints, tasks_dir=args.tasks, k=args.shots, n_clean=args.n_clean,
              n_corrupt=args.n_corrupt, n_eval=args.n_eval, top=args.top, rel=args.rel, reuse=args.reuse or (),
              dtype=args.dtype, device=args.device)
    if args.story:
        if args.run is None:
            from .errors import IclscopeError
            raise IclscopeError("--story needs --run (a training-lab run of the token testbed)")
        testbed_story(args.run, args.out, **kw)
        return 0
    run_dynamics(args.out, model=args.model, revisions=args.revisions, run=args.run,
                 tokens_per_step=args.tokens_per_step, **kw)
    return 0


def _cmd_compare(args) -> int:
    from .experiments.compare import run_compare

    fractions = [float(f) / 100 for f in args.fractions.split(",")]
    run_compare(args.dirs, args.out, labels=args.labels.split(",") if args.labels else None, fractions=fractions,
                depth_fraction=args.depth_fraction / 100)
    return 0


def _cmd_info(args) -> int:
    from . import load

    model = load(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    print(model)
    print(f"vocab_size={model.vocab_size} tokenizer={'yes' if model.tokenizer is not None else 'none'} "
          f"bos_token_id={model.bos_token_id} dtype={model.dtype} device={model.device}")
    print("hook points of layer 0:", ", ".join(n for n in model.hook_names() if n.startswith("blocks.0.")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="iclscope", description="Find, score, ablate and grow the attention heads "
                                "behind in-context learning.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="the main job on built-in defaults (nothing downloaded)")
    d.add_argument("--out", default="results/demo", help="results folder (default results/demo)")
    d.add_argument("--model", default="random:gpt2", help="model spec (default random:gpt2)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-train", action="store_true", help="skip the training-lab part")
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("train", help="train a small transformer (training lab), clamps throughout training")
    t.add_argument("config", nargs="?", default=None, help="TOML config (default: the reference few-shot setup)")
    t.add_argument("--out", required=True, help="run folder (resumed if it holds a state of the same config)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.lr=3e-4")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=_cmd_train)

    a = sub.add_parser("additivity", help="one-head-active, add-back and single-ablation study of a trained run")
    a.add_argument("run", help="a training run folder (for an ensemble: RUN/seed_S)")
    a.add_argument("--out", default=None, help="results folder (default RUN/additivity)")
    a.add_argument("--n", type=int, default=2048, help="sequences per measurement")
    a.add_argument("--how", default="zero", choices=["zero", "mean"], help="ablation of the inactive heads")
    a.set_defaults(fn=_cmd_additivity)

    c = sub.add_parser("clamp-sweep", help="train every subcircuit-clamp condition over seeds; phase-change table")
    c.add_argument("config", nargs="?", default=None, help="base TOML config (default: the reference setup)")
    c.add_argument("--out", default="results/clamp-sweep")
    c.add_argument("--seeds", default="0,1,2")
    c.add_argument("--sequences", default="6e5", help="sequences per run (default 6e5)")
    c.add_argument("--conditions", default=None, help="comma-separated subset of: none, prev_token, layer1, "
                   "layer1+match, copy, layer1+copy")
    c.add_argument("--workers", type=int, default=2, help="trainings at a time (one CPU thread each)")
    c.set_defaults(fn=_cmd_clamp_sweep)

    ds = sub.add_parser("data-sweep", help="phase-change time against a data property")
    ds.add_argument("config", nargs="?", default=None, help="base TOML config (default: the reference setup)")
    ds.add_argument("--vary", required=True, help="NAME=v1,v2,..., NAME in labels, classes, burstiness, context "
                    "or a dotted key")
    ds.add_argument("--out", default="results/data-sweep")
    ds.add_argument("--seeds", default="0,1")
    ds.add_argument("--sequences", default=None, help="sequences per run (default: the config's)")
    ds.add_argument("--workers", type=int, default=2)
    ds.set_defaults(fn=_cmd_data_sweep)

    sc = sub.add_parser("scores", help="induction, previous-token, duplicate-token and FV score of every head")
    _model_args(sc)
    _task_args(sc)
    sc.add_argument("--out", required=True)
    sc.set_defaults(fn=_cmd_scores)

    at = sub.add_parser("atlas", help="scores, ablation study and function vectors of a model; HTML report")
    _model_args(at)
    _task_args(at)
    at.add_argument("--out", required=True)
    at.add_argument("--device-map", default=None, help="e.g. auto, for a model larger than one GPU")
    at.add_argument("--n-eval", type=int, default=50, help="evaluation prompts per task")
    at.add_argument("--fractions", default="0,1,3,5,7,9,15,20", help="percent of heads to ablate")
    at.add_argument("--how", default="mean", choices=["mean", "zero"])
    at.add_argument("--positions", default="final", choices=["final", "all"])
    at.add_argument("--random-seeds", type=int, default=5)
    at.set_defaults(fn=_cmd_atlas)

    tk = sub.add_parser("tasks", help="ICL task files")
    tsub = tk.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND")
    tb = tsub.add_parser("build", help="build Todd-format task files from open lexical data installed here")
    tb.add_argument("--out", required=True)
    tb.add_argument("--names", default=None, help="comma-separated subset of the tasks")
    tb.set_defaults(fn=_cmd_tasks)

    dy = sub.add_parser("dynamics", help="head scores and accuracy over training checkpoints; role transitions")
    src = dy.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a hub model name (with --revisions)")
    src.add_argument("--run", help="a training-lab run folder (RUN/checkpoints/step_N)")
    dy.add_argument("--revisions", default=None, help="hub revisions, e.g. step1,step64,step1000 (with --model)")
    dy.add_argument("--checkpoints", default=None, help="with --run: a subset by step or name, e.g. 0,250,4000 "
                    "(default: every saved checkpoint)")
    dy.add_argument("--out", required=True, help="results folder (a rerun resumes at the next unfinished checkpoint)")
    dy.add_argument("--reuse", nargs="+", default=None, metavar="DIR", help="folders of earlier scores / atlas / "
                    "dynamics results: a checkpoint scored there with the same settings is not recomputed")
    dy.add_argument("--n-eval", type=int, default=50, help="evaluation prompts per task for the accuracy")
    dy.add_argument("--top", type=int, default=None, help="size of the top sets (default 2 %% of heads, at least 3)")
    dy.add_argument("--rel", type=float, default=0.25, help="a top head's score must be at least REL x the final "
                    "checkpoint's best (default 0.25)")
    dy.add_argument("--tokens-per-step", type=int, default=None, help="tokens per optimizer step, for the tokens "
                    "column of hub revisions (Pythia: 2097152)")
    dy.add_argument("--story", action="store_true", help="with --run on the token testbed: the whole story "
                    "(story.json, story.png, story.html)")
    dy.add_argument("--dtype", default=None, help="float32, bfloat16, float16")
    dy.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")
    _task_args(dy)
    dy.set_defaults(fn=_cmd_dynamics)

    cp = sub.add_parser("compare", help="atlas results of several models side by side; one HTML report")
    cp.add_argument("dirs", nargs="+", help="atlas results folders (the same task set)")
    cp.add_argument("--out", default="results/compare")
    cp.add_argument("--labels", default=None, help="comma-separated names for the models (default: from config.json)")
    cp.add_argument("--fractions", default="2,5,10,20", help="top-k as percent of all heads, for the overlap")
    cp.add_argument("--depth-fraction", type=float, default=10, help="percent of heads (at least 3) whose depth is "
                    "shown per kind")
    cp.set_defaults(fn=_cmd_compare)

    i = sub.add_parser("info", help="load a model and print its shape and hook points")
    _model_args(i)
    i.set_defaults(fn=_cmd_info)
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="random:<family>, a hub name, or a local directory")
    p.add_argument("--revision", default=None, help="hub revision, e.g. step1000 for a Pythia checkpoint")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...")


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=None, help="folder of Todd-format task files (default: built-in synthetic "
                   "token tasks)")
    p.add_argument("--shots", type=int, default=None, help="demonstrations per prompt (default 10, or the k an "
                   "iclscope token model was trained with)")
    p.add_argument("--n-clean", type=int, default=100, help="clean prompts per task for the FV task means")
    p.add_argument("--n-corrupt", type=int, default=25, help="label-corrupted prompts per task for FV scores")


def main(argv: list[str] | None = None) -> int:
    from .errors import IclscopeError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    try:
        return int(args.fn(args) or 0)
    except IclscopeError as e:
        print(f"iclscope {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"iclscope {args.command}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
