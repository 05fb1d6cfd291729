"""``iclscope <command>``: the command-line interface. ``iclscope --help`` lists the commands.

Every option is checked when it is parsed (the types of :mod:`iclscope.schema`), so a bad value is one
line on stderr and exit status 2 before anything is loaded or written. Heavy modules (torch, the
experiments) are imported inside the command functions only: ``iclscope --help`` and argument errors
stay fast.

Exit status: 0 done; 2 bad input (an argument error or an :class:`~iclscope.errors.IclscopeError`, one
line); an IclscopeError subclass whose class sets ``exit_code`` (a fault at run time, e.g. a diverging
training loss) exits with that code, also one line; 130 interrupted (Ctrl-C), one line. Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from .schema import (check_device, choice, device, key_value, make_fraction_list, name_list, nonnegative_int,
                     positive_count, positive_int, probability, revision, seed_list)

DTYPES = ("float32", "bfloat16", "float16", "float64", "fp32", "bf16", "fp16")  # iclscope.models._DTYPES
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # transformers' device_map strategies
CONDITIONS = ("none", "prev_token", "layer1", "layer1+match", "copy", "layer1+copy")  # experiments.lab.CONDITIONS
VARY_NAMES = ("labels", "classes", "burstiness", "context")  # experiments.lab.DATA_KEYS

fractions_with_zero = make_fraction_list(allow_zero=True)
fractions_above_zero = make_fraction_list(allow_zero=False)


# ----------------------------------------------------------------------------------------------------
# Value types local to the CLI (built from the schema's)
# ----------------------------------------------------------------------------------------------------


def one_fraction(text: str) -> float:
    """One fraction in (0, 1] ("0.1"; a percent such as "10" is refused)."""
    if "," in str(text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected one fraction in (0, 1], e.g. 0.1")
    return fractions_above_zero(text)[0]


def revision_list(text: str) -> list[str]:
    """Comma-separated distinct hub revisions ("step1,step1000")."""
    names = name_list(text)
    for r in names:
        revision(r)
    return names


def condition_list(text: str) -> list[str]:
    """Comma-separated distinct clamp-sweep conditions, each one of CONDITIONS."""
    names = name_list(text)
    pick = choice(*CONDITIONS)
    for n in names:
        pick(n)
    return names


_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9_.\-]+:[0-9]{1,5}")


def ray_address(text: str) -> str:
    """A Ray cluster address: auto, host:port or ray://host:port (checked for form before any work; whether
    the cluster answers is known only when the engine starts)."""
    t = str(text).strip()
    if t == "auto" or _ADDRESS.fullmatch(t):
        return t
    raise argparse.ArgumentTypeError(f"{text!r}: expected auto, host:port or ray://host:port (e.g. 10.0.0.5:6379)")


def int_list(text: str) -> list[int]:
    """Comma-separated distinct whole numbers >= 2 ("5,10,15"): the values of a labels or classes sweep."""
    out = []
    for p in name_list(text):
        try:
            n = positive_int(p)
        except argparse.ArgumentTypeError:
            n = 0
        if n < 2:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated distinct whole numbers >= 2, "
                                             f"e.g. 5,10,15; {p!r} is not one")
        out.append(n)
    return out


def set_item(text: str) -> str:
    """A ``--set KEY=VALUE`` override, checked for shape (:func:`iclscope.schema.key_value`); returned as
    given, for ``load_config``."""
    key_value(text)
    return str(text).strip()


_VARY_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def vary(text: str) -> str:
    """``NAME=v1,v2,...`` for data-sweep: NAME one of VARY_NAMES or a dotted config key; at least one value,
    no empty or repeated value. Returned as given (the lab parses the values)."""
    name, sep, values = str(text).partition("=")
    name = name.strip()
    if not sep or not _VARY_KEY.fullmatch(name) or ("." not in name and name not in VARY_NAMES):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=v1,v2,... with NAME one of "
                                         f"{', '.join(VARY_NAMES)} or a dotted config key such as "
                                         "data.exemplar_noise, e.g. labels=5,10,15")
    try:
        name_list(values)
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{name}= values {e}") from None
    return str(text).strip()


# ----------------------------------------------------------------------------------------------------
# The commands (heavy imports inside)
# ----------------------------------------------------------------------------------------------------


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


def _cmd_clamp_sweep(args) -> int:
    from .experiments.lab import clamp_sweep

    clamp_sweep(args.config, out=args.out, seeds=args.seeds, sequences=args.sequences, conditions=args.conditions,
                workers=args.workers, stack=not args.no_stack, address=args.address)
    return 0


def _cmd_data_sweep(args) -> int:
    from .experiments.lab import data_sweep

    data_sweep(args.config, vary=args.vary, out=args.out, seeds=args.seeds, sequences=args.sequences,
               workers=args.workers, stack=not args.no_stack, address=args.address)
    return 0


def _cmd_lab(args) -> int:
    from .experiments.lab_study import lab_study

    lab_study(args.config, out=args.out, seeds=args.seeds, sequences=args.sequences,
              data_sequences=args.data_sequences, labels=args.labels, classes=args.classes,
              conditions=args.conditions, additivity_n=args.additivity_n, additivity_how=args.how,
              workers=args.workers, address=args.address, stack=not args.no_stack)
    return 0


def _cmd_scores(args) -> int:
    from .experiments.atlas import run_scores

    p = _protocol(args)
    run_scores(args.model, args.out, tasks_dir=args.tasks, revision=args.revision, dtype=args.dtype,
               device=args.device, k=args.shots, n_clean=args.n_clean, n_corrupt=args.n_corrupt,
               protocol=_make_protocol(p), score_tasks=args.score_tasks)
    return 0


def _make_protocol(p: dict):
    from .tasks import Protocol

    preset = p.pop("preset")
    return Protocol.make(preset, **p)


def _cmd_atlas(args) -> int:
    from .experiments.atlas import run_atlas

    run_atlas(args.model, args.out, tasks_dir=args.tasks, revision=args.revision, dtype=args.dtype,
              device=args.device, device_map=args.device_map, k=args.shots, n_clean=args.n_clean,
              n_corrupt=args.n_corrupt, n_eval=args.n_eval, fractions=args.fractions, how=args.how,
              positions=args.positions, random_seeds=args.random_seeds, measures=tuple(args.measures),
              text_dir=args.text_dir, protocol=_make_protocol(_protocol(args)), score_tasks=args.score_tasks,
              eval_tasks=args.eval_tasks)
    return 0


def _cmd_tasks(args) -> int:
    from .tasks import build_tasks

    summary = build_tasks(args.out, names=args.names)
    for name, n in summary.items():
        print(f"{name:28s} {n}")
    print(f"task files in {args.out}/ (sources and licenses in SOURCES.md)")
    return 0


def _cmd_dynamics(args) -> int:
    from .errors import IclscopeError

    if args.story and args.run is None:
        raise IclscopeError("--story needs --run (a training-lab run of the token testbed)")
    if args.revisions and args.run is not None:
        raise IclscopeError("--revisions goes with --model; a run's checkpoints are chosen with --checkpoints")
    if args.checkpoints and args.model is not None:
        raise IclscopeError("--checkpoints goes with --run; hub checkpoints are chosen with --revisions")
    if args.model is not None and not args.revisions:
        raise IclscopeError(f"--model {args.model}: give --revisions (e.g. step1,step1000,step143000)")
    from .experiments.dynamics import run_dynamics, testbed_story

    kw = dict(checkpoints=args.checkpoints, tasks_dir=args.tasks, k=args.shots, n_clean=args.n_clean,
              n_corrupt=args.n_corrupt, n_eval=args.n_eval, top=args.top, rel=args.rel, reuse=args.reuse or (),
              dtype=args.dtype, device=args.device)
    if args.story:
        testbed_story(args.run, args.out, **kw)
        return 0
    run_dynamics(args.out, model=args.model, revisions=args.revisions, run=args.run,
                 tokens_per_step=args.tokens_per_step, **kw)
    return 0


def _cmd_study(args) -> int:
    from .experiments.study import cmd_study

    return cmd_study(args)


def _cmd_compare(args) -> int:
    from .experiments.compare import run_compare

    run_compare(args.dirs, args.out, labels=args.labels, fractions=args.fractions, depth_fraction=args.depth_fraction)
    return 0


def _cmd_info(args) -> int:
    from . import load

    model = load(args.model, revision=args.revision, dtype=args.dtype, device=args.device)
    print(model)
    print(f"vocab_size={model.vocab_size} tokenizer={'yes' if model.tokenizer is not None else 'none'} "
          f"bos_token_id={model.bos_token_id} dtype={model.dtype} device={model.device}")
    print("hook points of layer 0:", ", ".join(n for n in model.hook_names() if n.startswith("blocks.0.")))
    return 0


# ----------------------------------------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------------------------------------


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already says its default; a flag's
    default reads "off"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or action.required:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            shown = action.default
            if isinstance(shown, (list, tuple)):
                shown = ",".join(map(str, shown))
            return f"{text} (default: {str(shown).replace('%', '%%')})"
        return text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ONE line on stderr (no usage block), exit status 2."""

    def __init__(self, *a, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*a, **kw)

    def error(self, message: str):
        message = " ".join(str(message).split())
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="iclscope", description="Find, score, ablate and grow the attention heads behind in-context "
               "learning. Fractions are given as fractions (0.05 is 5 % of the heads), never as percents.")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress log lines")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser("demo", help="the main job on built-in defaults (nothing downloaded)")
    d.add_argument("--out", default="results/demo", help="results folder")
    d.add_argument("--model", default="random:gpt2", help="model spec: random:<family>, a hub name or a local folder")
    d.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (an integer >= 0)")
    d.add_argument("--no-train", action="store_true", help="skip the training-lab part")
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("train", help="train a small transformer (training lab), clamps throughout training")
    t.add_argument("config", nargs="?", default=None, help="TOML config file, or fewshot / testbed for a shipped "
                   "one (default: the reference few-shot setup)")
    t.add_argument("--out", required=True, help="run folder (resumed if it holds a state of the same config)")
    t.add_argument("--set", action="append", type=set_item, metavar="KEY=VALUE", help="override a config key, "
                   "value in TOML, e.g. train.lr=3e-4; repeatable (default: none)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(fn=_cmd_train)

    a = sub.add_parser("additivity", help="one-head-active, add-back and single-ablation study of a trained run")
    a.add_argument("run", help="a training run folder (for an ensemble: RUN/seed_S)")
    a.add_argument("--out", default=None, help="results folder (default: RUN/additivity)")
    a.add_argument("--n", type=positive_int, default=2048, help="sequences per measurement")
    a.add_argument("--how", default="zero", type=choice("zero", "mean"), help="ablation of the inactive heads: "
                   "zero or mean")
    a.set_defaults(fn=_cmd_additivity)

    c = sub.add_parser("clamp-sweep", help="train every subcircuit-clamp condition over seeds; phase-change table")
    c.add_argument("config", nargs="?", default=None, help="base TOML config (default: the reference setup)")
    c.add_argument("--out", default="results/clamp-sweep", help="results folder (one subfolder per condition)")
    c.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated distinct seeds (integers >= 0)")
    c.add_argument("--sequences", type=positive_count, default="6e5", help="training sequences per run (a whole "
                   "number, e.g. 600000 or 6e5)")
    c.add_argument("--conditions", type=condition_list, default=None, help="comma-separated subset of: "
                   f"{', '.join(CONDITIONS)} (default: all)")
    _engine_args(c, "stacks of runs trained at a time")
    c.set_defaults(fn=_cmd_clamp_sweep)

    ds = sub.add_parser("data-sweep", help="phase-change time against a data property")
    ds.add_argument("config", nargs="?", default=None, help="base TOML config (default: the reference setup)")
    ds.add_argument("--vary", type=vary, required=True, help="NAME=v1,v2,..., NAME one of "
                    f"{', '.join(VARY_NAMES)} or a dotted config key such as data.exemplar_noise")
    ds.add_argument("--out", default="results/data-sweep", help="results folder (one subfolder per value)")
    ds.add_argument("--seeds", type=seed_list, default="0,1", help="comma-separated distinct seeds (integers >= 0)")
    ds.add_argument("--sequences", type=positive_count, default=None, help="training sequences per run, e.g. 6e5 "
                    "(default: the config's train.sequences)")
    _engine_args(ds, "stacks of runs trained at a time")
    ds.set_defaults(fn=_cmd_data_sweep)

    lb = sub.add_parser("lab", help="the whole lab study (Singh et al.): reference run, clamp sweep, labels and "
                        "classes sweeps, additivity; one results folder, one report")
    lb.add_argument("config", nargs="?", default=None, help="base TOML config (default: the reference setup)")
    lb.add_argument("--out", default="results/lab", help="results folder (one subfolder per part, report.html at "
                    "the top)")
    lb.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated distinct seeds (integers >= 0) "
                    "of every run")
    lb.add_argument("--sequences", type=positive_count, default="6e5", help="training sequences of the reference run "
                    "and of each clamp-sweep run (a whole number, e.g. 600000 or 6e5)")
    lb.add_argument("--data-sequences", type=positive_count, default=None, help="training sequences of each labels / "
                    "classes sweep run (default: --sequences; the study's 15-label runs needed ~1.2e6)")
    lb.add_argument("--labels", type=int_list, default="5,10,15", help="values of the labels sweep (data.n_labels)")
    lb.add_argument("--classes", type=int_list, default="50,200", help="values of the classes sweep (data.n_classes)")
    lb.add_argument("--conditions", type=condition_list, default=None, help="clamp-sweep conditions, comma-separated "
                    f"subset of: {', '.join(CONDITIONS)} (default: all; none is always included)")
    lb.add_argument("--additivity-n", type=positive_int, default=2048, help="sequences per additivity measurement")
    lb.add_argument("--how", type=choice("zero", "mean"), default="zero", help="additivity: ablation of the "
                    "inactive heads, zero or mean")
    _engine_args(lb, "shared by every part")
    lb.set_defaults(fn=_cmd_lab)

    sc = sub.add_parser("scores", help="induction, previous-token, duplicate-token and FV score of every head")
    _model_args(sc)
    _task_args(sc)
    sc.add_argument("--out", required=True, help="results folder (heads.csv and heat maps)")
    _protocol_args(sc, evaluate=False)
    sc.set_defaults(fn=_cmd_scores)

    at = sub.add_parser("atlas", help="scores, ablation study and function vectors of a model; HTML report")
    _model_args(at)
    _task_args(at)
    at.add_argument("--out", required=True, help="results folder (tables, figures, report.html)")
    at.add_argument("--device-map", type=choice(*DEVICE_MAPS), default=None, help="spread a model larger than "
                    f"one GPU over devices: {', '.join(DEVICE_MAPS)} (default: none, one device)")
    at.add_argument("--n-eval", type=positive_int, default=50, help="evaluation prompts per task")
    at.add_argument("--fractions", type=fractions_with_zero, default="0,0.01,0.03,0.05,0.07,0.09,0.15,0.2",
                    help="fractions of all heads to ablate, comma-separated, each in [0, 1] (0.05 is 5 %% of the "
                    "heads, not a percent)")
    at.add_argument("--how", default="mean", type=choice("mean", "zero"), help="ablation: mean or zero")
    at.add_argument("--positions", default="final", type=choice("final", "all"), help="ablated positions: final "
                    "or all")
    at.add_argument("--random-seeds", type=nonnegative_int, default=5, help="random head sets per fraction, the "
                    "baseline (an integer >= 0)")
    at.add_argument("--measures", type=_measure_list, default="first_token,token_loss", help="ablation measures, "
                    "comma-separated: first_token (always), generate_f1 (greedy-decoding token F1, slower), "
                    "token_loss (token-loss difference on natural text)")
    _protocol_args(at, evaluate=True)
    at.add_argument("--text-dir", default=None, help=".txt file or folder for the token-loss difference (default: "
                    "the shipped King James Genesis, public domain)")
    at.set_defaults(fn=_cmd_atlas)

    tk = sub.add_parser("tasks", help="ICL task files")
    tsub = tk.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND")
    tb = tsub.add_parser("build", help="build Todd-format task files from open lexical data installed here")
    tb.add_argument("--out", required=True, help="folder for the task files (one JSON file per task)")
    tb.add_argument("--names", type=name_list, default=None, help="comma-separated subset of the tasks "
                    "(default: all)")
    tb.set_defaults(fn=_cmd_tasks)

    dy = sub.add_parser("dynamics", help="head scores and accuracy over training checkpoints; role transitions")
    src = dy.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="a hub model name, with --revisions (no default: give --model or --run)")
    src.add_argument("--run", help="a training-lab run folder, RUN/checkpoints/step_N (no default: give --model or "
                     "--run)")
    dy.add_argument("--revisions", type=revision_list, default=None, help="comma-separated hub revisions, e.g. "
                    "step1,step64,step1000 (with --model; default: none)")
    dy.add_argument("--checkpoints", type=name_list, default=None, help="with --run: a subset by step or name, "
                    "e.g. 0,250,4000 (default: every saved checkpoint)")
    dy.add_argument("--out", required=True, help="results folder (a rerun resumes at the next unfinished checkpoint)")
    dy.add_argument("--reuse", nargs="+", default=None, metavar="DIR", help="folders of earlier scores / atlas / "
                    "dynamics results: a checkpoint scored there with the same settings is not recomputed "
                    "(default: none)")
    dy.add_argument("--n-eval", type=positive_int, default=50, help="evaluation prompts per task for the accuracy")
    dy.add_argument("--top", type=positive_int, default=None, help="size of the top sets, in heads (default: 2 %% "
                    "of the heads, at least 3)")
    dy.add_argument("--rel", type=probability, default=0.25, help="a top head's score must be at least REL x the "
                    "final checkpoint's best (a number in [0, 1])")
    dy.add_argument("--tokens-per-step", type=positive_int, default=None, help="tokens per optimizer step, for the "
                    "tokens column of hub revisions, e.g. 2097152 for Pythia (default: none, no tokens column)")
    dy.add_argument("--story", action="store_true", help="with --run on the token testbed: the whole story "
                    "(story.json, story.png, story.html)")
    dy.add_argument("--dtype", type=choice(*DTYPES), default=None, help=f"{', '.join(DTYPES)} (default: the "
                    "model's own)")
    dy.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N or mps (default: cpu)")
    _task_args(dy)
    dy.set_defaults(fn=_cmd_dynamics)

    cp = sub.add_parser("compare", help="atlas results of several models side by side; one HTML report")
    cp.add_argument("dirs", nargs="+", help="atlas results folders (the same task set)")
    cp.add_argument("--out", default="results/compare", help="results folder (tables, figures, report.html)")
    cp.add_argument("--labels", type=name_list, default=None, help="comma-separated names for the models, one per "
                    "folder (default: from each folder's config.json)")
    cp.add_argument("--fractions", type=fractions_above_zero, default="0.02,0.05,0.1,0.2", help="top-k sets as "
                    "fractions of all heads, comma-separated, each in (0, 1], for the overlap (0.05 is 5 %%)")
    cp.add_argument("--depth-fraction", type=one_fraction, default=0.1, help="fraction of all heads (at least 3 "
                    "heads) whose depth is shown per kind, in (0, 1]")
    cp.set_defaults(fn=_cmd_compare)

    st = sub.add_parser("study", help="a whole study (every model, every revision, atlas + dynamics + compare) "
                        "as jobs on Ray; resumable job by job (docs/study.md)")
    st.add_argument("study", metavar="STUDY.toml", help="the study file (see docs/study.md)")
    st.add_argument("--out", required=True, help="the study folder: one folder per job, study.json and report.html "
                    "(on a cluster: on storage every node shares)")
    st.add_argument("--address", type=ray_address, default=None, help="join a Ray cluster: auto (the one `ray start` made here), "
                    "host:port or ray://host:10001 (default: an embedded Ray on this machine)")
    st.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of the embedded Ray (default: all)")
    st.add_argument("--num-gpus", type=nonnegative_int, default=None, help="GPUs of the embedded Ray (default: all)")
    st.set_defaults(fn=_cmd_study)

    i = sub.add_parser("info", help="load a model and print its shape and hook points")
    _model_args(i)
    i.set_defaults(fn=_cmd_info)
    return p


MEASURES = ("first_token", "generate_f1", "token_loss")  # mirrors experiments.atlas.ablation (no torch import here)


# mirrors iclscope.tasks.protocol.PROTOCOL_CHOICES (the published value first; kept in step by a test)
PROTOCOL_CHOICES = {
    "bos": ("published", "tokenizer", "none"),
    "corrupt": ("permute", "shuffle", "cycle"),
    "corrupt_prompts": ("fresh", "twins"),
    "fv_bias": ("full", "none"),
    "fv_layer": ("output", "input"),
    "induction": ("iclscope", "head_detector"),
}
_PROTOCOL_HELP = {
    "bos": "published: one BOS per prompt; tokenizer: only a BOS the tokenizer adds; none",
    "corrupt": "how the demonstration labels of corrupted prompts are permuted (permute: a random permutation, "
               "as published; cycle: a cyclic shift, so no label stays correct)",
    "corrupt_prompts": "fresh: corrupted prompts drawn anew (published); twins: the first clean prompts relabelled",
    "fv_bias": "include each head's output-projection bias in a function vector (full, as published) or not",
    "fv_layer": "add a function vector to the output (published) or the input of layer L",
    "induction": "induction score: iclscope's (mean over repeated-half queries) or TransformerLens's head_detector",
}


def _protocol_args(p: argparse.ArgumentParser, evaluate: bool) -> None:
    """The protocol options (docs/protocol.md); a field not given keeps the preset's value."""
    p.add_argument("--protocol", type=choice("published", "iclscope"), default="published",
                   help="the starting set of protocol choices: the published one (Todd et al.'s code) or iclscope's "
                        "variants (docs/protocol.md)")
    for name, options in PROTOCOL_CHOICES.items():
        p.add_argument("--" + name.replace("_", "-"), type=choice(*options), default=None,
                       help=f"{_PROTOCOL_HELP[name]} (default: the preset's)")
    p.add_argument("--test-fraction", type=_open_fraction, default=None, help="held-out share of each task's pairs "
                   "(the queries of fresh corrupted prompts), in (0, 1) (default: the preset's, 0.3)")
    p.add_argument("--score-tasks", type=name_list, default=None, help="comma-separated tasks whose FV scores rank "
                   "the heads (default: the alphabetical first half)")
    if evaluate:
        p.add_argument("--eval-tasks", type=name_list, default=None, help="comma-separated tasks for the ablation "
                       "study and function vectors (default: the other half)")


def _open_fraction(text: str) -> float:
    v = probability(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number strictly between 0 and 1")
    return v


def _protocol(args) -> dict:
    fields = {name: getattr(args, name) for name in PROTOCOL_CHOICES}
    fields["test_fraction"] = args.test_fraction
    return {"preset": args.protocol, **{k: v for k, v in fields.items() if v is not None}}


def _measure_list(text: str) -> list[str]:
    items = name_list(text)
    bad = [m for m in items if m not in MEASURES]
    if bad:
        raise argparse.ArgumentTypeError(f"{bad[0]!r} is not a measure; choose from {', '.join(MEASURES)}")
    return items


def _engine_args(p: argparse.ArgumentParser, workers: str) -> None:
    """--workers, --no-stack and --address of the training-lab commands whose stacks run on the engine."""
    p.add_argument("--workers", type=positive_int, default=2, help=f"CPUs of the embedded Ray engine ({workers}), "
                   "one CPU thread per stack (with --address: the cluster's CPUs)")
    p.add_argument("--no-stack", action="store_true", help="one engine job per run (default: runs of one shape "
                   "train as one stacked model)")
    p.add_argument("--address", type=ray_address, default=None, help="join a Ray cluster: auto (the one `ray start` made here), "
                   "host:port or ray://host:10001; --out must then be on storage every node shares (default: "
                   "an embedded Ray of --workers CPUs on this machine)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="random:<family>, a hub name, or a local directory")
    p.add_argument("--revision", type=revision, default=None, help="hub revision, e.g. step1000 for a Pythia "
                   "checkpoint (default: the hub's main)")
    p.add_argument("--dtype", type=choice(*DTYPES), default=None, help=f"{', '.join(DTYPES)} (default: the "
                   "model's own)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N or mps (default: cpu)")


def _task_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default=None, help="folder of Todd-format task files (default: built-in synthetic "
                   "token tasks)")
    p.add_argument("--shots", type=positive_int, default=None, help="demonstrations per prompt (default: 10, or "
                   "the k an iclscope token model was trained with)")
    p.add_argument("--n-clean", type=positive_int, default=100, help="clean prompts per task for the FV task means")
    p.add_argument("--n-corrupt", type=positive_int, default=25, help="label-corrupted prompts per task for FV "
                   "scores")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        if getattr(args, "command", None) == "tasks":  # "iclscope tasks" without a subcommand
            parser.parse_args(["tasks", "--help"])  # prints the tasks help and exits 0
        parser.print_help()
        return 0
    from .errors import IclscopeError

    name = args.command if args.command != "tasks" else "tasks build"
    if args.quiet:
        os.environ["ICLSCOPE_QUIET"] = "1"  # read by every progress display (iclscope.report.progress)
    try:
        if getattr(args, "device", None) is not None:
            check_device(args.device)  # before any work: --device cuda on a machine without CUDA
        return int(args.fn(args) or 0)
    except IclscopeError as e:
        code = getattr(type(e), "exit_code", 2)
        print(f"iclscope {name}: error: {_one_line(e)}", file=sys.stderr)
        return int(code)
    except KeyboardInterrupt:
        print(f"iclscope {name}: interrupted; finished results are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
