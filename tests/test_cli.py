"""The command line, end to end, in a subprocess as a user runs it."""

import json
import os
import subprocess
import sys

import pandas as pd


def run_cli(*args, cwd=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "iclscope", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    assert "demo" in r.stdout and "info" in r.stdout


def test_demo_writes_results(tmp_path):
    r = run_cli("demo", "--no-train", "--out", str(tmp_path / "demo"))
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(tmp_path / "demo" / "heads" / "heads.csv")
    assert len(df) == 8 and (df.kl_mean_ablation > 0).all()
    assert json.loads((tmp_path / "demo" / "heads" / "config.json").read_text())["model"] == "random:gpt2"
    assert (tmp_path / "demo" / "heads" / "kl_mean_ablation.png").stat().st_size > 1000
    assert "one batched pass" in r.stdout


def test_bad_input_is_one_line_without_traceback(tmp_path):
    r = run_cli("info", "--model", str(tmp_path))
    assert r.returncode == 2
    assert "holds no model" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("info", "--model", "random:mamba")  # a state-space model: refused, naming the family and why
    assert r.returncode == 2 and "'mamba' is not supported" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("info", "--model", "random:nosuchfamily")
    assert r.returncode == 2 and "unknown family" in r.stderr and "Traceback" not in r.stderr


def _actions(parser):
    """(command, action) for every option and positional of every (sub)command."""
    import argparse
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                for cmd, b in _actions(sub):
                    yield f"{name} {cmd}".strip(), b
        elif not isinstance(a, argparse._HelpAction):
            yield "", a


def test_every_option_help_shows_its_default_or_is_required():
    from iclscope.cli import HelpFormatter, build_parser

    seen = 0
    for cmd, a in _actions(build_parser()):
        text = HelpFormatter("iclscope")._get_help_string(a)
        assert a.help, (cmd, a.dest)
        if a.required or (not a.option_strings and a.nargs not in ("?", "*")):
            continue  # required: nothing to default to
        assert "default" in text.lower(), (cmd, a.option_strings, text)
        seen += 1
    assert seen > 50


def test_help_and_argument_errors_import_no_torch():
    code = ("import sys\nfrom iclscope.cli import main\nfor argv in (['--help'], ['atlas', '--help'], "
            "['atlas', '--model', 'm', '--out', 'o', '--fractions', '5']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, r.stderr


def test_argument_error_is_one_line_exit_2():
    r = run_cli("atlas", "--model", "random:gpt2", "--out", "x", "--fractions", "5,10")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--fractions" in lines[0] and "percent" in lines[0], r.stderr


def test_fractions_default_are_fractions():
    from iclscope.cli import build_parser

    args = build_parser().parse_args(["atlas", "--model", "m", "--out", "o"])
    assert args.fractions == [0.0, 0.01, 0.03, 0.05, 0.07, 0.09, 0.15, 0.2]
    args = build_parser().parse_args(["compare", "a", "b"])
    assert args.fractions == [0.02, 0.05, 0.1, 0.2] and args.depth_fraction == 0.1


def test_cli_lists_mirror_the_modules():
    """cli.py copies a few name lists so that it never imports torch: they must stay in step."""
    from iclscope import cli
    from iclscope.experiments.atlas.ablation import MEASURES

    assert tuple(cli.MEASURES) == tuple(MEASURES)


def test_cli_protocol_choices_mirror_the_protocol():
    from iclscope import cli
    from iclscope.tasks.protocol import PROTOCOL_CHOICES

    assert cli.PROTOCOL_CHOICES == PROTOCOL_CHOICES


def test_protocol_options_reach_the_protocol():
    from iclscope.cli import _make_protocol, _protocol, build_parser

    args = build_parser().parse_args(["atlas", "--model", "random:gpt2", "--out", "x", "--protocol", "iclscope",
                                      "--bos", "published", "--score-tasks", "a,b"])
    p = _make_protocol(_protocol(args))
    assert (p.bos, p.corrupt, p.fv_layer) == ("published", "cycle", "input")
    assert args.score_tasks == ["a", "b"]
