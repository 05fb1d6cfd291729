"""Quality of `iclscope tasks build`: current capitals, clear inflections, common-word vocabularies, and
the tool comparing built files with Todd et al.'s. Runs without WordNet or word lists (small stand-ins);
checks on the installed resources skip when those are absent."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest

from iclscope.tasks import build as B

ROOT = Path(__file__).resolve().parents[1]


# --- capitals ---------------------------------------------------------------------------------------


class _Country:
    def __init__(self, name, capital, code):
        self._n, self._c, self._code = name, capital, code

    def name(self):
        return self._n

    def capital(self):
        return self._c

    def info(self):
        return {"name": self._n, "capital": self._c, "ISO": {"alpha3": self._code}}


def test_capital_fixes_applied_with_stand_in_countryinfo(monkeypatch):
    rows = [("France", "Paris", "FRA"), ("Kazakhstan", "Nur-Sultan", "KAZ"), ("Bolivia", "Sucre", "BOL"),
            ("Republic of Macedonia", "Skopje", "MKD"), ("Myanmar", "Naypyidaw", "MMR"), ("Burma", "Naypyidaw", "MMR"),
            ("Hong Kong", "City of Victoria", "HKG"), ("Luxembourg", "Luxembourg", "LUX"), ("The Bahamas", "Nassau", "BHS"),
            ("Ivory Coast", "Yamoussoukro", "CIV"), ("Sri Lanka", "Colombo", "LKA"), ("Burundi", "Bujumbura", "BDI")]
    fake = types.ModuleType("countryinfo")
    fake.all_countries = lambda: [_Country(*r) for r in rows]
    monkeypatch.setitem(sys.modules, "countryinfo", fake)
    got = dict(B.build_country_capital(B.Resources()))
    assert got == {"France": "Paris", "Kazakhstan": "Astana", "North Macedonia": "Skopje", "Myanmar": "Naypyidaw",
                   "Bahamas": "Nassau", "Burundi": "Gitega"}
    assert all(f.why and "http" in f.why for f in B.CAPITAL_FIXES.values()), "every fix names its source"
    assert len(B.UN_MEMBERS) == 193


def test_capitals_from_installed_countryinfo():
    pytest.importorskip("countryinfo", reason="countryinfo not installed (pip install countryinfo)")
    got = dict(B.build_country_capital(B.Resources()))
    assert got["Kazakhstan"] == "Astana" and got["Myanmar"] == "Naypyidaw" and got["France"] == "Paris"
    assert got["North Macedonia"] == "Skopje" and "Republic of Macedonia" not in got
    assert not {"Bolivia", "Sri Lanka", "Ivory Coast", "Swaziland", "Hong Kong", "Wales", "Burma"} & set(got)
    assert 170 <= len(got) <= 193 and len(set(got.values())) == len(got)


# --- inflections ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lem():
    return pytest.importorskip("lemminflect", reason="lemminflect not installed (pip install lemminflect)")


def test_inflections_irregular_and_regular(lem):
    past = {"go": "went", "walk": "walked", "run": "ran", "see": "saw", "write": "wrote", "cut": "cut",
            "travel": "traveled", "program": "programmed"}
    plural = {"child": "children", "mouse": "mice", "city": "cities", "man": "men", "foot": "feet",
              "knife": "knives", "box": "boxes", "person": "people", "goose": "geese"}
    for v, p in past.items():
        assert B._inflect(lem, v, "VERB", "VBD") == p, v
    for n, p in plural.items():
        assert B._inflect(lem, n, "NOUN", "NNS") == p, n


def test_ambiguous_inflections_left_out(lem):
    assert B._inflect(lem, "lie", "VERB", "VBD") is None  # lay / lied
    assert B._inflect(lem, "be", "VERB", "VBD") is None  # was / were
    assert B._inflect(lem, "found", "VERB", "VBD") is None  # also the past of find
    for noun in ("sheep", "fish", "glasses", "criterion"):
        assert B._inflect(lem, noun, "NOUN", "NNS") is None, noun
    assert B._inflect(lem, "advice", "NOUN", "NNS", known=frozenset({"advice"})) is None  # not in the word list


# --- common-word vocabularies -------------------------------------------------------------------------


class _FakeWordNet:
    """Just what the vocabulary code reads: index(pos), count(lemma, pos), synset(pos, offset)."""

    def __init__(self, counts):  # {(lemma, pos): SemCor count}
        self._counts = counts
        self._index = {p: {} for p in "nvar"}
        for i, (lemma, pos) in enumerate(counts):
            self._index[pos][lemma] = B.IndexEntry(lemma, pos, 1, [i])
        self._words = {i: lemma for i, (lemma, _) in enumerate(counts)}

    def index(self, pos):
        return self._index[pos]

    def count(self, lemma, pos):
        return self._counts.get((lemma, pos), 0)

    def synset(self, pos, offset):
        return B.Synset(offset, pos, [self._words[offset]], [], "")


def test_word_list_tasks_use_common_words_only():
    counts = {("house", "n"): 40, ("walk", "v"): 3, ("walk", "n"): 2, ("zymurgy", "n"): 1, ("green", "a"): 9,
              ("quickly", "r"): 6, ("obscure", "a"): 4}
    res = B.Resources()
    res._cache.update(words=sorted(["house", "walk", "zymurgy", "green", "quickly", "obscure", "aardvark"]),
                      wordnet=_FakeWordNet(counts))
    assert res.common_words() == ["green", "house", "quickly", "walk"]  # count >= 5 over all parts of speech
    assert dict(B.build_capitalize(res)) == {"green": "Green", "house": "House", "quickly": "Quickly", "walk": "Walk"}
    listed = B._word_lists(B.Resources(n_generated=3, _cache=res._cache), "t", 3, min)
    assert all(set(x.split(", ")) <= {"green", "house", "quickly", "walk"} for x, _ in listed)


def test_installed_vocabularies_are_common(tmp_path):
    try:
        wn = B.WordNet()
    except B.ResourceMissing as exc:
        pytest.skip(str(exc))
    res = B.Resources()
    try:
        words = res.common_words()
    except B.ResourceMissing as exc:
        pytest.skip(str(exc))
    common = set(B._common_any(wn, B.WORD_LIST_MIN_COUNT))
    assert set(words) <= common and "aardvark" in res.words() and "aardvark" not in words
    assert len(words) >= 1000
    caps = dict(B.build_capitalize(res))
    assert set(caps) <= common
    pytest.importorskip("lemminflect", reason="lemminflect not installed")
    past = dict(B.build_present_past(res))
    assert past["go"] == "went" and "found" not in past and "lie" not in past
    assert all(wn.count(v, "v") >= B.COMMON_MIN_COUNT for v in past)
    plural = dict(B.build_singular_plural(res))
    assert plural["child"] == "children" and plural["mouse"] == "mice" and "advice" not in plural


# --- the comparison tool ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_todd_tasks", ROOT / "tools" / "compare_todd_tasks.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _write(path, pairs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"input": x, "output": y} for x, y in pairs]))


def test_compare_tool_on_tiny_folders(tmp_path, tool, capsys):
    todd, ours = tmp_path / "todd", tmp_path / "ours"
    _write(todd / "abstractive" / "antonym.json",
           [("hot", "cold"), ("up", "down"), ("big", ["small", "little"]), ("Wet", "dry"), ("old", "young")])
    _write(ours / "antonym.json", [("hot", "cold"), ("up", "Down"), ("big", "little"), ("wet", "damp"), ("fast", "slow")])
    _write(todd / "abstractive" / "capitalize_first_letter.json", [("dog", "D"), ("cat", "C")])
    _write(ours / "first-letter.json", [("dog", "d"), ("cat", "c"), ("eel", "e")])
    _write(todd / "extractive" / "animal_v_object_3.json", [("cat, cup, pen", "cat"), ("dog, pen, box", "dog")])
    _write(ours / "animal_v_object_3.json", [("cup, cat, hat", "cat"), ("pen, hat, cup", "pen")])
    rows = {r.task: r for r in tool.compare_folders(todd, ours)}
    a = rows["antonym"]
    assert (a.n_ours, a.n_todd, a.shared_inputs) == (5, 5, 4)  # hot, up, big, wet (matched ignoring case)
    assert a.exact == pytest.approx(2 / 4) and a.case_insensitive == pytest.approx(3 / 4)
    f = rows["first-letter"]
    assert f.todd_task == "capitalize_first_letter" and f.shared_inputs == 2 and f.exact == 0 and f.case_insensitive == 1
    c = rows["animal_v_object_3"]
    assert c.shared_inputs == 0 and c.exact is None
    assert c.words_shared == pytest.approx(3 / 5)  # cat, cup, pen of cat, cup, pen, dog, box
    assert c.role_agreement == pytest.approx(2 / 3)  # pen is a target in ours only
    assert set(rows) == {"antonym", "first-letter", "animal_v_object_3"}
    assert tool.main([str(todd), str(ours)]) == 0
    assert "| antonym | antonym | 5 | 5 | 4 | 50.0% | 75.0% |" in capsys.readouterr().out


def test_atlas_on_built_word_tasks_end_to_end_through_the_cli(tmp_path):
    """Issue 10's check: `iclscope tasks build` makes a Todd-format folder here (country-capital needs only
    countryinfo, which the test set-up installs), and `iclscope atlas --model random:gpt2 --tasks` runs on it
    end to end with real usable pairs (the random model's shipped subword tokenizer)."""
    import os
    import subprocess
    import sys

    import pandas as pd

    pytest.importorskip("countryinfo")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "iclscope", "--quiet", *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    cli("tasks", "build", "--out", "tasks", "--names", "country-capital")
    pairs = json.loads((tmp_path / "tasks" / "country-capital.json").read_text())
    assert len(pairs) > 100 and {"input": "France", "output": "Paris"} in pairs
    cli("atlas", "--model", "random:gpt2", "--tasks", "tasks", "--shots", "4", "--n-clean", "8", "--n-corrupt", "4",
        "--n-eval", "8", "--random-seeds", "2", "--fractions", "0,0.1", "--measures", "first_token", "--out", "atlas")
    out = tmp_path / "atlas"
    config = json.loads((out / "config.json").read_text())
    assert config["score_tasks"] == config["eval_tasks"] == ["country-capital"]
    fv = pd.read_csv(out / "fv_per_task.csv")
    assert set(fv.task) == {"country-capital"} and fv.score.notna().all()
    vectors = pd.read_csv(out / "function_vectors.csv")
    assert (vectors.n == 8).all()  # all 8 evaluation prompts usable: the answers tokenise to real words
    ablation = pd.read_csv(out / "ablation.csv")
    assert set(ablation.task) == {"country-capital"} and ablation.accuracy.between(0, 1).all()
    assert (out / "report.html").exists() and (out / "ablation.png").exists()
