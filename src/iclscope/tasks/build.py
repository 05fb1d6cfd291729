"""Build ICL word-task files from open lexical data installed on this machine.

``build_tasks(out_dir)`` writes Todd-format task files (``<name>.json``: a JSON list of
``{"input", "output"}``), a ``<name>.meta.json`` for each (source, license, kind, how it was made)
and a ``SOURCES.md`` summarising sources and licenses. Nothing is downloaded: every resource is an
optional package from Debian or PyPI, and a task whose resource is missing is skipped with a warning
that says what to install.

Resources (see ``SOURCES`` for licenses):

* WordNet 3.0, Debian ``wordnet-base`` (``/usr/share/wordnet``): its ``index.*``/``data.*`` files are
  read directly (format: wndb(5)); sense order and the SemCor tag counts of ``cntlist.rev`` (or of
  the index when that file is absent) pick common words and their main senses.
* FreeDict English-French, Debian ``dict-freedict-eng-fra`` (``/usr/share/dictd``), GPL-2.0-or-later.
* A word list, Debian ``wamerican`` (``/usr/share/dict/words``), SCOWL's permissive license.
* PyPI ``countryinfo`` (MIT) for capitals; PyPI ``lemminflect`` (MIT) for past tenses and plurals.

The project does not ship the files this writes: they are derived from the resources above on the
user's machine, and a file derived from a GPL dictionary (english-french) is under the GPL too.
"""

from __future__ import annotations

import gzip
import importlib
import json
import random
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from .. import store
from .core import META_SUFFIX, Task, TaskError, save_task

MARKER = ".iclscope-tasks"  # JSON, but not *.json: load_tasks must not read it as a task

__all__ = ["build_tasks", "available_builders", "BUILDERS", "SOURCES", "WordNet", "ResourceMissing"]

ENGLISH_WORD = re.compile(r"[a-z]+")
FRENCH_WORD = re.compile(r"[a-zàâäæçéèêëîïôöœùûüÿ]+")


class ResourceMissing(Exception):
    """A lexical resource is not installed; the message says what to install."""


# --------------------------------------------------------------------------------------------------
# Sources and licenses
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A lexical resource: what it is, its license, and how to install it."""

    key: str
    name: str
    license: str
    install: str
    url: str


SOURCES: dict[str, Source] = {
    s.key: s
    for s in (
        Source(
            "wordnet",
            "WordNet 3.0 (Princeton University), Debian package wordnet-base",
            "WordNet 3.0 license (permissive, BSD-style: use, copy, modify and distribute for any purpose "
            "without fee, keeping Princeton's copyright notice and disclaimer)",
            "apt-get install wordnet-base",
            "https://wordnet.princeton.edu/license-and-commercial-use",
        ),
        Source(
            "freedict-eng-fra",
            "FreeDict English-French dictionary, Debian package dict-freedict-eng-fra",
            "GPL-2.0-or-later (files derived from it are under the GPL as well; do not redistribute them "
            "under other terms)",
            "apt-get install dict-freedict-eng-fra",
            "https://freedict.org/",
        ),
        Source(
            "words",
            "SCOWL word list (Kevin Atkinson et al.), Debian package wamerican",
            "SCOWL license (permissive, MIT/BSD-style: use, copy, modify, distribute with the copyright notice)",
            "apt-get install wamerican",
            "http://wordlist.aspell.net/",
        ),
        Source(
            "countryinfo",
            "countryinfo (PyPI), country data",
            "MIT",
            "pip install countryinfo",
            "https://github.com/porimol/countryinfo",
        ),
        Source(
            "lemminflect",
            "lemminflect (PyPI), inflection lexicon derived from the NIH SPECIALIST Lexicon",
            "MIT (lexicon data: SPECIALIST Lexicon terms of use, open)",
            "pip install lemminflect",
            "https://github.com/bjascob/LemmInflect",
        ),
    )
}


# --------------------------------------------------------------------------------------------------
# WordNet database files (wndb(5))
# --------------------------------------------------------------------------------------------------

_POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
_SS_TYPE_POS = {"1": "n", "2": "v", "3": "a", "4": "r", "5": "a"}


@dataclass
class Synset:
    """One WordNet synset: its words (in order, underscores for spaces) and pointers.

    ``pointers`` are (symbol, target offset, target pos, source word number, target word number);
    word numbers count from 1, and 0/0 marks a semantic (whole-synset) pointer.
    """

    offset: int
    pos: str
    words: list[str]
    pointers: list[tuple[str, int, str, int, int]]
    gloss: str


@dataclass
class IndexEntry:
    lemma: str
    pos: str
    tagsense_cnt: int
    offsets: list[int]  # synsets in WordNet's sense order (most frequent first)


class WordNet:
    """A reader for the WordNet 3.0 database files, without nltk.

    Args:
        folder: the folder holding ``index.noun``, ``data.noun``, ... (default ``/usr/share/wordnet``).
    """

    DEFAULT_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/local/WordNet-3.0/dict")

    def __init__(self, folder: str | Path | None = None):
        if folder is None:
            folder = next((d for d in self.DEFAULT_DIRS if (Path(d) / "data.noun").is_file()), None)
            if folder is None:
                raise ResourceMissing(
                    f"WordNet database not found in {', '.join(self.DEFAULT_DIRS)} (install it: {SOURCES['wordnet'].install})"
                )
        self.folder = Path(folder)
        for pos in _POS_FILES.values():
            for kind in ("index", "data"):
                if not (self.folder / f"{kind}.{pos}").is_file():
                    raise ResourceMissing(
                        f"WordNet file {self.folder / f'{kind}.{pos}'} missing (install: {SOURCES['wordnet'].install})"
                    )
        self._data: dict[str, bytes] = {}
        self._index: dict[str, dict[str, IndexEntry]] = {}
        self._synsets: dict[tuple[str, int], Synset] = {}
        self._counts: dict[tuple[str, str], int] | None = None

    def index(self, pos: str) -> dict[str, IndexEntry]:
        """``{lemma: IndexEntry}`` for a part of speech ``"n" | "v" | "a" | "r"``."""
        if pos not in self._index:
            entries = {}
            with open(self.folder / f"index.{_POS_FILES[pos]}", encoding="latin-1") as f:
                for line in f:
                    if line.startswith(" "):  # license header
                        continue
                    parts = line.split()
                    synset_cnt, p_cnt = int(parts[2]), int(parts[3])
                    rest = parts[4 + p_cnt:]
                    tagsense_cnt = int(rest[1])
                    offsets = [int(o) for o in rest[2: 2 + synset_cnt]]
                    entries[parts[0]] = IndexEntry(parts[0], pos, tagsense_cnt, offsets)
            self._index[pos] = entries
        return self._index[pos]

    def synset(self, pos: str, offset: int) -> Synset:
        """Parse the ``data.<pos>`` line at byte ``offset`` (synset offsets are byte offsets)."""
        pos = "a" if pos == "s" else pos
        key = (pos, offset)
        if key not in self._synsets:
            if pos not in self._data:
                self._data[pos] = (self.folder / f"data.{_POS_FILES[pos]}").read_bytes()
            buf = self._data[pos]
            line = buf[offset: buf.index(b"\n", offset)].decode("latin-1")
            body, _, gloss = line.partition(" | ")
            parts = body.split()
            w_cnt = int(parts[3], 16)
            words = [re.sub(r"\(.*\)$", "", parts[4 + 2 * i]) for i in range(w_cnt)]
            i = 4 + 2 * w_cnt
            p_cnt = int(parts[i])
            pointers = []
            for j in range(p_cnt):
                sym, off, ppos, st = parts[i + 1 + 4 * j: i + 5 + 4 * j]
                pointers.append((sym, int(off), "a" if ppos == "s" else ppos, int(st[:2], 16), int(st[2:], 16)))
            self._synsets[key] = Synset(int(parts[0]), pos, words, pointers, gloss.strip())
        return self._synsets[key]

    def senses(self, lemma: str, pos: str) -> list[Synset]:
        """The synsets of ``lemma`` in sense order (most frequent first); empty when unknown."""
        entry = self.index(pos).get(lemma.lower().replace(" ", "_"))
        return [] if entry is None else [self.synset(pos, o) for o in entry.offsets]

    def counts(self) -> dict[tuple[str, str], int]:
        """SemCor tag counts per (lemma, pos), summed over senses, from ``cntlist.rev``.

        Without that file, each lemma counts its index's ``tagsense_cnt`` (senses seen at least once).
        """
        if self._counts is None:
            counts: dict[tuple[str, str], int] = defaultdict(int)
            path = self.folder / "cntlist.rev"
            if path.is_file():
                with open(path, encoding="latin-1") as f:
                    for line in f:
                        parts = line.split()
                        if len(parts) != 3 or "%" not in parts[0]:
                            continue
                        lemma, _, key = parts[0].partition("%")
                        counts[(lemma, _SS_TYPE_POS.get(key[:1], "?"))] += int(parts[2])
            else:
                for pos in _POS_FILES:
                    for lemma, e in self.index(pos).items():
                        counts[(lemma, pos)] = e.tagsense_cnt
            self._counts = dict(counts)
        return self._counts

    def count(self, lemma: str, pos: str) -> int:
        return self.counts().get((lemma.lower(), pos), 0)

    def find_synset(self, lemma: str, pos: str, sense: int = 1) -> Synset:
        """The ``sense``-th synset (1-based, WordNet order) of ``lemma``, e.g. ``("animal", "n", 1)``."""
        senses = self.senses(lemma, pos)
        if len(senses) < sense:
            raise ResourceMissing(f"WordNet in {self.folder} has no sense {sense} of {lemma!r} ({pos})")
        return senses[sense - 1]

    def hyponym_closure(self, root: Synset) -> set[int]:
        """Offsets of ``root`` and every synset below it (hyponyms and instances), same part of speech."""
        seen, stack = {root.offset}, [root]
        while stack:
            s = stack.pop()
            for sym, off, ppos, _, _ in s.pointers:
                if sym in ("~", "~i") and ppos == root.pos and off not in seen:
                    seen.add(off)
                    stack.append(self.synset(ppos, off))
        return seen


# --------------------------------------------------------------------------------------------------
# Resources, loaded lazily and shared between builders
# --------------------------------------------------------------------------------------------------


@dataclass
class Resources:
    """Where to find each resource; each is loaded on first use and raises ResourceMissing if absent."""

    wordnet_dir: str | Path | None = None
    freedict_dir: str | Path | None = None
    words_file: str | Path | None = None
    seed: int = 0
    n_generated: int = 1000
    _cache: dict = field(default_factory=dict)

    def wordnet(self) -> WordNet:
        if "wordnet" not in self._cache:
            self._cache["wordnet"] = WordNet(self.wordnet_dir)
        return self._cache["wordnet"]

    def module(self, name: str):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise ResourceMissing(f"Python package {name!r} is not installed (install: {SOURCES[name].install})") from exc

    def words(self) -> list[str]:
        """Sorted distinct lowercase ASCII words of 3-10 letters from the word list."""
        if "words" not in self._cache:
            candidates = [self.words_file] if self.words_file else ["/usr/share/dict/words", "/usr/share/dict/american-english"]
            path = next((Path(p) for p in candidates if Path(p).is_file()), None)
            if path is None:
                raise ResourceMissing(f"word list not found at {', '.join(map(str, candidates))} (install: {SOURCES['words'].install})")
            text = path.read_text(encoding="utf-8", errors="replace")
            words = sorted({w for w in text.split() if ENGLISH_WORD.fullmatch(w) and 3 <= len(w) <= 10})
            if not words:
                raise ResourceMissing(f"word list {path} has no lowercase ASCII words")
            self._cache["words"], self._cache["words_path"] = words, path
        return self._cache["words"]

    def known_words(self) -> frozenset[str] | None:
        """Every lowercase word of the word list (any length), or None when no word list is installed."""
        if "known" not in self._cache:
            try:
                self.words()
            except ResourceMissing:
                self._cache["known"] = None
            else:
                text = Path(self._cache["words_path"]).read_text(encoding="utf-8", errors="replace")
                self._cache["known"] = frozenset(w for w in text.split() if ENGLISH_WORD.fullmatch(w))
        return self._cache["known"]

    def common_words(self) -> list[str]:
        """The vocabulary of the word-list tasks: ``words_file`` as given when one was passed; otherwise
        the installed word list's words that WordNet knows as lowercase lemmas with a SemCor count (all
        parts of speech) >= ``WORD_LIST_MIN_COUNT`` -- common base forms, not the whole dictionary."""
        words = self.words()
        if self.words_file:
            return words
        if "common" not in self._cache:
            common = set(_common_any(self.wordnet(), WORD_LIST_MIN_COUNT))
            self._cache["common"] = [w for w in words if w in common]
        return self._cache["common"]

    def freedict_entries(self) -> list[tuple[str, str]]:
        """(headword, definition text) of the FreeDict English-French dictionary, in file order."""
        if "freedict" not in self._cache:
            folder = Path(self.freedict_dir or "/usr/share/dictd")
            index, data = folder / "freedict-eng-fra.index", folder / "freedict-eng-fra.dict.dz"
            if not data.is_file():
                data = folder / "freedict-eng-fra.dict"
            if not index.is_file() or not data.is_file():
                raise ResourceMissing(
                    f"FreeDict English-French not found in {folder} (install: {SOURCES['freedict-eng-fra'].install})"
                )
            raw = gzip.decompress(data.read_bytes()) if data.suffix == ".dz" else data.read_bytes()
            entries = []
            for line in index.read_text(encoding="utf-8").splitlines():
                parts = line.split("\t")
                if len(parts) != 3 or parts[0].startswith("00database"):
                    continue
                start, length = _dict_b64(parts[1]), _dict_b64(parts[2])
                entries.append((parts[0], raw[start: start + length].decode("utf-8", errors="replace")))
            self._cache["freedict"] = entries
        return self._cache["freedict"]


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _dict_b64(s: str) -> int:
    """Decode a dictd index number (base 64, most significant digit first)."""
    n = 0
    for ch in s:
        n = n * 64 + _B64.index(ch)
    return n


# --------------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------------

Pairs = list[tuple[str, str]]


# SemCor tag count (summed over senses, in WordNet's cntlist.rev) from which a word counts as common:
# SemCor is a 230k-word corpus, so 3 means the word was tagged at least three times in it.
COMMON_MIN_COUNT = 3
# The same for the word-list tasks (capitalize, letters, choose_*, alphabetically_*), any part of speech.
WORD_LIST_MIN_COUNT = 5


def _is_word(w: str) -> bool:
    return bool(ENGLISH_WORD.fullmatch(w))


def _common(wn: WordNet, pos: str, min_count: int) -> list[str]:
    """Single-word lowercase lemmas of a part of speech with a SemCor count >= ``min_count``.

    The index lowercases every lemma; a lemma is kept only if its main sense writes it in lowercase
    (drops proper nouns such as "Newfoundland" or "April").
    """
    out = []
    for lemma, entry in wn.index(pos).items():
        if _is_word(lemma) and wn.count(lemma, pos) >= min_count and lemma in wn.synset(pos, entry.offsets[0]).words:
            out.append(lemma)
    return sorted(out)


def _common_any(wn: WordNet, min_count: int) -> list[str]:
    """Single-word lowercase lemmas whose SemCor count summed over parts of speech is >= ``min_count``
    (each must be written in lowercase in the main sense of a part of speech it has)."""
    total: dict[str, int] = defaultdict(int)
    for pos in _POS_FILES:
        for lemma in _common(wn, pos, 0):
            total[lemma] += wn.count(lemma, pos)
    return sorted(w for w, c in total.items() if c >= min_count)


def build_antonym(res: Resources) -> Pairs:
    """word -> its antonym in its most frequent sense that has one (WordNet lexical "!" pointers).

    Inputs: single lowercase words seen in SemCor; so is the antonym (drops rare coinages such as
    "unangry"). Parts of speech tried in the order adjective, verb, noun, adverb, the first that
    gives an antonym wins.
    """
    wn = res.wordnet()
    out: dict[str, str] = {}
    for pos in ("a", "v", "n", "r"):
        for word in _common(wn, pos, 1):
            if word in out:
                continue
            for s in wn.senses(word, pos):
                if word not in s.words:  # only as a capitalised name in this sense
                    continue
                src = s.words.index(word) + 1
                ants = [
                    wn.synset(ppos, off).words[tgt - 1]
                    for sym, off, ppos, s_no, tgt in s.pointers
                    if sym == "!" and s_no == src and tgt > 0
                ]
                ants = [a for a in ants if _is_word(a) and a != word and sum(wn.count(a, p) for p in _POS_FILES)]
                if ants:
                    out[word] = ants[0]
                    break
    return sorted(out.items())


def build_synonym(res: Resources) -> Pairs:
    """word -> a synonym from the synset of its most frequent sense.

    Both words are single lowercase words seen in SemCor (count >= 2 for the input, >= 1 for the
    synonym), the synonym neither contains nor is contained in the word (no "run" -> "running"),
    and among candidates the most frequent one is chosen. Parts of speech: adjective, verb, noun,
    adverb, first hit wins.
    """
    wn = res.wordnet()
    out: dict[str, str] = {}
    for pos in ("a", "v", "n", "r"):
        for word in _common(wn, pos, 2):
            if word in out:
                continue
            senses = wn.senses(word, pos)
            if not senses:
                continue
            cands = [
                w for w in dict.fromkeys(senses[0].words)
                if _is_word(w) and w != word and w not in word and word not in w and wn.count(w, pos) >= 1
            ]
            if cands:
                out[word] = max(cands, key=lambda w: (wn.count(w, pos), w))
    return sorted(out.items())


# UN member states (193), ISO 3166-1 alpha-3; source: https://www.un.org/en/about-us/member-states
# (membership unchanged since South Sudan joined in 2011). The country-capital task keeps these only:
# countryinfo also lists territories, defunct states and constituent countries.
UN_MEMBERS = frozenset("""
AFG ALB DZA AND AGO ATG ARG ARM AUS AUT AZE BHS BHR BGD BRB BLR BEL BLZ BEN BTN BOL BIH BWA BRA BRN BGR BFA
BDI CPV KHM CMR CAN CAF TCD CHL CHN COL COM COG CRI CIV HRV CUB CYP CZE PRK COD DNK DJI DMA DOM ECU EGY SLV
GNQ ERI EST SWZ ETH FJI FIN FRA GAB GMB GEO DEU GHA GRC GRD GTM GIN GNB GUY HTI HND HUN ISL IND IDN IRN IRQ
IRL ISR ITA JAM JPN JOR KAZ KEN KIR KWT KGZ LAO LVA LBN LSO LBR LBY LIE LTU LUX MDG MWI MYS MDV MLI MLT MHL
MRT MUS MEX FSM MDA MCO MNG MNE MAR MOZ MMR NAM NRU NPL NLD NZL NIC NER NGA MKD NOR OMN PAK PLW PAN PNG PRY
PER PHL POL PRT QAT KOR ROU RUS RWA KNA LCA VCT WSM SMR STP SAU SEN SRB SYC SLE SGP SVK SVN SLB SOM ZAF SSD
ESP LKA SDN SUR SWE CHE SYR TJK TZA THA TLS TGO TON TTO TUN TUR TKM TUV UGA UKR ARE GBR USA URY UZB VUT VEN
VNM YEM ZMB ZWE""".split())


@dataclass(frozen=True)
class CapitalFix:
    """A correction to countryinfo for one country (by ISO alpha-3 code), with the fact's source.

    ``name``/``capital`` replace countryinfo's when given; ``drop`` leaves the country out (several
    capitals, a disputed capital, or one in transition), since one answer would be wrong or arguable.
    """

    name: str | None = None
    capital: str | None = None
    drop: bool = False
    why: str = ""


CAPITAL_FIXES: dict[str, CapitalFix] = {
    "KAZ": CapitalFix(capital="Astana", why="renamed from Nur-Sultan back to Astana on 17 Sep 2022 "
                      "(constitutional amendment; https://en.wikipedia.org/wiki/Astana)"),
    "BDI": CapitalFix(capital="Gitega", why="political capital since the law of 16 Jan 2019; Bujumbura stays the "
                      "economic capital (https://en.wikipedia.org/wiki/Gitega)"),
    "MKD": CapitalFix(name="North Macedonia", why="renamed in Feb 2019 (Prespa agreement; "
                      "https://en.wikipedia.org/wiki/North_Macedonia)"),
    "MMR": CapitalFix(name="Myanmar", capital="Naypyidaw", why="capital since 2006; countryinfo also lists it as "
                      "'Burma' (https://en.wikipedia.org/wiki/Naypyidaw)"),
    "SWZ": CapitalFix(name="Eswatini", drop=True, why="renamed from Swaziland in Apr 2018; two capitals, Mbabane "
                      "(administrative) and Lobamba (legislative) (https://en.wikipedia.org/wiki/Eswatini)"),
    "BOL": CapitalFix(drop=True, why="constitutional capital Sucre, seat of government La Paz "
                      "(https://en.wikipedia.org/wiki/Bolivia)"),
    "ZAF": CapitalFix(drop=True, why="three capitals: Pretoria, Cape Town, Bloemfontein "
                      "(https://en.wikipedia.org/wiki/South_Africa)"),
    "BEN": CapitalFix(drop=True, why="official capital Porto-Novo, seat of government Cotonou "
                      "(https://en.wikipedia.org/wiki/Benin)"),
    "CIV": CapitalFix(name="Côte d'Ivoire", drop=True, why="official capital Yamoussoukro, most of the government "
                      "in Abidjan (https://en.wikipedia.org/wiki/Ivory_Coast)"),
    "LKA": CapitalFix(drop=True, why="legislative capital Sri Jayawardenepura Kotte, executive and commercial "
                      "capital Colombo (countryinfo says Colombo) (https://en.wikipedia.org/wiki/Sri_Lanka)"),
    "ISR": CapitalFix(drop=True, why="Jerusalem's status as capital is internationally disputed "
                      "(https://en.wikipedia.org/wiki/Status_of_Jerusalem)"),
    "GNQ": CapitalFix(drop=True, why="capital being moved from Malabo to Ciudad de la Paz "
                      "(https://en.wikipedia.org/wiki/Ciudad_de_la_Paz)"),
}


def build_country_capital(res: Resources) -> Pairs:
    """country -> capital: the 193 UN member states in countryinfo, corrected by ``CAPITAL_FIXES``.

    Countries with several capitals, a disputed one or one in transition are left out (see
    ``CAPITAL_FIXES``), as are city-states whose capital has the country's own name (copying the
    input would answer them). A leading "The " is dropped from names ("The Bahamas").
    """
    ci = res.module("countryinfo")
    if hasattr(ci, "all_countries"):  # countryinfo >= 0.2
        rows = [(c.info(), c.name(), c.capital()) for c in ci.all_countries()]
    else:  # countryinfo 0.1.x: CountryInfo().all() -> {key: info dict}
        rows = [(info, info.get("name", key), info.get("capital")) for key, info in ci.CountryInfo().all().items()]
    out: dict[str, str] = {}
    done: set[str] = set()
    for info, country, capital in rows:
        code = ((info or {}).get("ISO") or {}).get("alpha3") if isinstance(info, dict) else None
        if code not in UN_MEMBERS or code in done:
            continue
        fix = CAPITAL_FIXES.get(code, CapitalFix())
        if fix.drop:
            continue
        country, capital = fix.name or country, fix.capital or capital
        if isinstance(capital, list):
            capital = capital[0] if len(capital) == 1 else None
        if not isinstance(country, str) or not isinstance(capital, str):
            continue
        country, capital = country.strip(), capital.strip()
        if country.startswith("The "):
            country = country[4:]
        if re.search(r"[(),/;]", country + capital) or not country or not capital:
            continue
        if capital.casefold() == country.casefold() or capital in out.values():
            continue
        done.add(code)
        out[country] = capital
    return sorted(out.items())


def _squeeze(form: str) -> str:
    """``form`` with doubled letters made single: US/UK spelling variants ("modeled", "modelled") meet."""
    return re.sub(r"(.)\1", r"\1", form)


# Where lemminflect's first form is not the usual one (checked against Merriam-Webster's entries):
# a string replaces it, None leaves the word out (the usual plural is the unchanged word).
INFLECTION_FIXES: dict[tuple[str, str], str | None] = {
    ("person", "NNS"): "people",
    ("fish", "NNS"): None, ("deer", "NNS"): None, ("moose", "NNS"): None, ("salmon", "NNS"): None,
    ("trout", "NNS"): None, ("aircraft", "NNS"): None, ("offspring", "NNS"): None,
    ("program", "VBD"): "programmed",
}


def _inflect(lem, lemma: str, upos: str, tag: str, known: frozenset[str] | None = None) -> str | None:
    """lemminflect's ``tag`` form of ``lemma``, or None when it is not one clear answer.

    None when ``lemma`` is itself an inflected form of another lemma ("found" of find, "glasses"),
    when no form differs from a noun lemma (unchanged plurals, "sheep"), or when several forms remain
    that are not doubled-letter spelling variants of each other ("lie" -> lay / lied, "leaf" -> leaves
    / leafs); of spelling variants the first (American, "traveled") is kept. For nouns lemminflect
    lists the lemma itself when the noun has an uncountable use ("box", "advice"): that entry is
    ignored. With ``known`` (the installed word list), forms missing from it ("informations",
    "advices") are ignored as well. ``INFLECTION_FIXES`` comes first.
    """
    if (lemma, tag) in INFLECTION_FIXES:
        return INFLECTION_FIXES[(lemma, tag)]
    if set(lem.getAllLemmas(lemma, upos=upos).get(upos, (lemma,))) - {lemma}:
        return None
    forms = [f for f in lem.getAllInflections(lemma, upos=upos).get(tag, ()) if _is_word(f)]
    if upos == "NOUN":
        forms = [f for f in forms if f != lemma]
    if known is not None:
        forms = [f for f in forms if f in known]
    if not forms or len({_squeeze(f) for f in forms}) > 1:
        return None
    return forms[0]


def build_present_past(res: Resources) -> Pairs:
    """verb -> simple past (lemminflect ``VBD``), for common WordNet verbs.

    Verbs: single lowercase words with a SemCor count >= ``COMMON_MIN_COUNT`` as verbs. Left out when
    the past is not one clear answer (see ``_inflect``: "lie" -> lay / lied, "found" as a form of
    find); US/UK spelling variants keep the American form ("traveled"). When a word list is
    installed (wamerican), only past forms it lists count.
    """
    wn = res.wordnet()
    lem = res.module("lemminflect")
    known = res.known_words()
    out = []
    for verb in _common(wn, "v", COMMON_MIN_COUNT):
        past = _inflect(lem, verb, "VERB", "VBD", known)
        if past:
            out.append((verb, past))
    return out


def build_singular_plural(res: Resources) -> Pairs:
    """noun -> plural (lemminflect ``NNS``), for common countable WordNet nouns.

    Nouns: single lowercase words with a SemCor count >= ``COMMON_MIN_COUNT`` as nouns, used at
    least as often as nouns as as verbs. Left out: unchanged plurals ("sheep"), uncountable uses
    ("advice"), words that are already plurals ("glasses") and nouns with competing plurals
    ("criterion" -> criteria / criterions); see ``_inflect``. When a word list is installed
    (wamerican), only plurals it lists count (drops "informations", "advices").
    """
    wn = res.wordnet()
    lem = res.module("lemminflect")
    known = res.known_words()
    out = []
    for noun in _common(wn, "n", COMMON_MIN_COUNT):
        if wn.count(noun, "n") < wn.count(noun, "v"):
            continue
        plural = _inflect(lem, noun, "NOUN", "NNS", known)
        if plural:
            out.append((noun, plural))
    return out


def build_english_french(res: Resources) -> Pairs:
    """English word -> the first translation of its first sense in FreeDict English-French.

    Kept: single lowercase ASCII English headwords translated by a single lowercase French word
    that differs from the English one (identical cognates would let copying solve the task).
    """
    out: dict[str, str] = {}
    for head, text in res.freedict_entries():
        if not _is_word(head) or head in out:
            continue
        lines = [l.strip() for l in text.splitlines()[1:] if l.strip()]
        if not lines:
            continue
        first = re.sub(r"^\d+\.\s*", "", lines[0]).split(",")[0].strip()
        if FRENCH_WORD.fullmatch(first) and first != head:
            out[head] = first
    return sorted(out.items())


def _sample_words(res: Resources, salt: str, n: int) -> list[str]:
    words = res.common_words()
    rng = random.Random(f"{salt}-{res.seed}")
    return sorted(rng.sample(words, min(n, len(words))))


def build_capitalize(res: Resources) -> Pairs:
    """word -> Word (first letter upper-cased), common words sampled from the word list (a word list
    word that WordNet knows with a SemCor count >= 5; with ``words_file``, that list as given)."""
    return [(w, w[0].upper() + w[1:]) for w in _sample_words(res, "capitalize", res.n_generated)]


def build_first_letter(res: Resources) -> Pairs:
    """word -> its first letter."""
    return [(w, w[0]) for w in _sample_words(res, "first-letter", res.n_generated)]


def build_last_letter(res: Resources) -> Pairs:
    """word -> its last letter."""
    return [(w, w[-1]) for w in _sample_words(res, "last-letter", res.n_generated)]


def _word_lists(res: Resources, salt: str, size: int, pick: Callable[[list[str]], str]) -> Pairs:
    """``n_generated`` inputs "w1, w2, ..., w_size" of distinct words, output ``pick(words)``."""
    words = res.common_words()
    rng = random.Random(f"{salt}-{res.seed}")
    out, seen = [], set()
    while len(out) < res.n_generated:
        ws = rng.sample(words, size)
        text = ", ".join(ws)
        if text not in seen:
            seen.add(text)
            out.append((text, pick(ws)))
    return out


def _list_builder(salt: str, size: int, pick: Callable[[list[str]], str], doc: str):
    def build(res: Resources) -> Pairs:
        return _word_lists(res, salt, size, pick)

    build.__doc__ = doc
    return build


@dataclass(frozen=True)
class Category:
    """A WordNet noun category for odd-one-out tasks.

    A word belongs when one of its first ``top_senses`` noun senses lies under ``root`` (a
    (lemma, sense number) pair, e.g. ``("animal", 1)``); with ``primary_noun`` it must also be used
    at least as often as a noun as in any other part of speech in SemCor (drops "young", "entire").
    """

    root: tuple[str, int]
    top_senses: int = 1
    primary_noun: bool = True


ANIMAL = Category(("animal", 1))
ARTIFACT = Category(("artifact", 1))
FRUIT = Category(("edible_fruit", 1), top_senses=2, primary_noun=False)
COLOR = Category(("chromatic_color", 1), top_senses=2, primary_noun=False)
PERSON = ("person", 1)


def _category_words(wn: WordNet, cat: Category, exclude: Sequence[tuple[str, int]], min_count: int = 1) -> list[str]:
    """Single lowercase nouns of category ``cat``, seen >= ``min_count`` times in SemCor (any part of
    speech), with no noun sense at all under any root in ``exclude`` (so a distractor can never also
    be a target) and neither of their two main senses a person ("cat" as a guy)."""
    member = wn.hyponym_closure(wn.find_synset(cat.root[0], "n", cat.root[1]))
    banned = set().union(*(wn.hyponym_closure(wn.find_synset(r, "n", s)) for r, s in exclude)) if exclude else set()
    person = wn.hyponym_closure(wn.find_synset(*PERSON[:1], "n", PERSON[1]))
    out = []
    for word in _common(wn, "n", 0):
        entry = wn.index("n")[word]
        if not any(o in member for o in entry.offsets[: cat.top_senses]):
            continue
        if any(o in banned for o in entry.offsets) or any(o in person for o in entry.offsets[:2]):
            continue
        counts = {p: wn.count(word, p) for p in ("n", "v", "a", "r")}
        if sum(counts.values()) < min_count:
            continue
        if cat.primary_noun and counts["n"] < max(counts["v"], counts["a"], counts["r"]):
            continue
        out.append(word)
    return sorted(out)


def _odd_one_out(salt: str, target: Category, other: Category, size: int, doc: str):
    """A builder: lists of ``size`` words, one from ``target`` among ``size - 1`` from ``other``."""

    def build(res: Resources) -> Pairs:
        wn = res.wordnet()
        targets = _category_words(wn, target, [other.root])
        others = _category_words(wn, other, [target.root], min_count=2)
        if len(targets) < 2 or len(others) < size:
            return []
        rng = random.Random(f"{salt}-{res.seed}")
        out, seen = [], set()
        limit = min(res.n_generated, len(targets) * 20)
        for _ in range(limit * 10):
            if len(out) >= limit:
                break
            t = rng.choice(targets)
            ws = rng.sample(others, size - 1)
            ws.insert(rng.randrange(size), t)
            text = ", ".join(ws)
            if text not in seen:
                seen.add(text)
                out.append((text, t))
        return out

    build.__doc__ = doc
    return build


@dataclass(frozen=True)
class Builder:
    """How one task is made: its kind, the sources it needs, the function producing its pairs."""

    name: str
    kind: str
    sources: tuple[str, ...]
    make: Callable[[Resources], Pairs]

    @property
    def description(self) -> str:
        return " ".join((self.make.__doc__ or "").split())


BUILDERS: dict[str, Builder] = {
    b.name: b
    for b in (
        Builder("antonym", "abstractive", ("wordnet",), build_antonym),
        Builder("synonym", "abstractive", ("wordnet",), build_synonym),
        Builder("country-capital", "abstractive", ("countryinfo",), build_country_capital),
        Builder("present-past", "abstractive", ("wordnet", "lemminflect"), build_present_past),
        Builder("singular-plural", "abstractive", ("wordnet", "lemminflect"), build_singular_plural),
        Builder("english-french", "abstractive", ("freedict-eng-fra",), build_english_french),
        Builder("capitalize", "abstractive", ("words", "wordnet"), build_capitalize),
        Builder("first-letter", "abstractive", ("words", "wordnet"), build_first_letter),
        Builder("last-letter", "abstractive", ("words", "wordnet"), build_last_letter),
        Builder("choose_first_of_5", "extractive", ("words", "wordnet"),
                _list_builder("first5", 5, lambda ws: ws[0], "five distinct words -> the first one.")),
        Builder("choose_middle_of_5", "extractive", ("words", "wordnet"),
                _list_builder("middle5", 5, lambda ws: ws[2], "five distinct words -> the middle (third) one.")),
        Builder("choose_last_of_5", "extractive", ("words", "wordnet"),
                _list_builder("last5", 5, lambda ws: ws[-1], "five distinct words -> the last one.")),
        Builder("alphabetically_first_3", "extractive", ("words", "wordnet"),
                _list_builder("alpha_first3", 3, min, "three distinct words -> the alphabetically first.")),
        Builder("alphabetically_last_3", "extractive", ("words", "wordnet"),
                _list_builder("alpha_last3", 3, max, "three distinct words -> the alphabetically last.")),
        Builder("animal_v_object_3", "extractive", ("wordnet",),
                _odd_one_out("animal_v_object_3", ANIMAL, ARTIFACT, 3,
                             "one animal among two objects (WordNet: first sense under animal.n.01 vs "
                             "artifact.n.01) -> the animal.")),
        Builder("animal_v_object_5", "extractive", ("wordnet",),
                _odd_one_out("animal_v_object_5", ANIMAL, ARTIFACT, 5,
                             "one animal among four objects (WordNet animal.n.01 vs artifact.n.01) -> the animal.")),
        Builder("fruit_v_animal_3", "extractive", ("wordnet",),
                _odd_one_out("fruit_v_animal_3", FRUIT, ANIMAL, 3,
                             "one fruit among two animals (WordNet edible_fruit.n.01 vs animal.n.01) -> the fruit.")),
        Builder("color_v_animal_3", "extractive", ("wordnet",),
                _odd_one_out("color_v_animal_3", COLOR, ANIMAL, 3,
                             "one color among two animals (WordNet chromatic_color.n.01 vs animal.n.01) -> the color.")),
    )
}


def available_builders() -> list[str]:
    """Names of every task ``build_tasks`` knows how to make."""
    return list(BUILDERS)


# --------------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------------


def _clean(pairs: Pairs) -> Pairs:
    """Drop empty and duplicate pairs; keep one output per input (the first)."""
    out, seen = [], set()
    for x, y in pairs:
        x, y = x.strip(), y.strip()
        if x and y and x not in seen:
            seen.add(x)
            out.append((x, y))
    return out


def _write_sources(out_dir: Path) -> None:
    """Rewrite ``SOURCES.md`` from every builder-made ``*.meta.json`` in ``out_dir``."""
    metas = []
    for p in sorted(out_dir.glob(f"*{META_SUFFIX}")):
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(meta, dict) and meta.get("builder") == __name__:
            metas.append(meta)
    lines = [
        "# Sources of these task files",
        "",
        "Written by `iclscope.tasks.build_tasks` from lexical data installed on this machine. Each file",
        "is derived from the sources below and falls under their licenses; in particular a file derived",
        "from a GPL dictionary is itself under the GPL.",
        "",
        "| task | kind | pairs | sources | licenses |",
        "|---|---|---|---|---|",
    ]
    used: set[str] = set()
    for m in metas:
        keys = m.get("source_keys", [])
        used.update(keys)
        lic = "; ".join(SOURCES[k].license.split(" (")[0] for k in keys if k in SOURCES)
        lines.append(f"| {m['name']} | {m.get('kind', '')} | {m.get('n_pairs', '')} | {m.get('source', '')} | {lic} |")
    lines += ["", "## Sources", ""]
    for key in sorted(used):
        if key in SOURCES:
            s = SOURCES[key]
            lines.append(f"- **{s.name}** <{s.url}>: {s.license}.")
    store.write_text(out_dir / "SOURCES.md", "\n".join(lines) + "\n")


def _marker(out_dir: Path) -> list[str] | None:
    try:
        m = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return list(m.get("files", [])) if isinstance(m, dict) and m.get("iclscope") == "tasks" else None


def _check_out(out_dir: Path, names: Sequence[str]) -> list[str]:
    """Refuse (TaskError, nothing written) a ``out_dir`` that is a file, a non-empty folder this builder did not
    make, or one of our folders where a task file of ``names`` is the user's own. Returns the task names this
    builder wrote there before ([] for a new or empty folder)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise TaskError(f"--out {out_dir} is a file, not a folder; nothing was written")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return []
    made = _marker(out_dir)
    if made is None:
        raise TaskError(f"--out {out_dir} is not empty and was not made by `iclscope tasks build` (no {MARKER}); "
                        f"nothing was written there: choose a new or empty folder")
    theirs = [n for n in names if n not in made and ((out_dir / f"{store.safe_name(n)}.json").exists()
                                                      or (out_dir / f"{store.safe_name(n)}{META_SUFFIX}").exists())]
    if theirs:
        raise TaskError(f"--out {out_dir}: {', '.join(f'{n}.json' for n in theirs)} was not written by "
                        f"`iclscope tasks build`; nothing was written: choose another folder")
    return made


def _claim(out_dir: Path) -> list[str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    store.write_json(out_dir / MARKER, {"iclscope": "tasks", "builder": __name__, "files": []})
    return []


def build_tasks(
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    *,
    seed: int = 0,
    n_generated: int = 1000,
    wordnet_dir: str | Path | None = None,
    freedict_dir: str | Path | None = None,
    words_file: str | Path | None = None,
    min_pairs: int = 20,
) -> dict[str, int | str]:
    """Write task files built from the lexical resources installed here.

    For each task: ``<out_dir>/<name>.json`` (Todd format), ``<name>.meta.json`` (``name``, ``kind``,
    ``source``, ``source_keys``, ``license``, ``description``, ``n_pairs``, ``builder``, ``seed``);
    then ``SOURCES.md`` listing every built task's sources and licenses. Pairs are cleaned (no
    empty or duplicate inputs) and sorted or seeded, so the same resources and seed give the same files.

    Args:
        out_dir: folder to write into: new, empty, or made by an earlier ``build_tasks`` (marked by
            ``.iclscope-tasks``); any other non-empty folder is refused untouched, and a task file this
            builder did not write is never overwritten. Every file is written atomically.
        names: tasks to build (default: all of :func:`available_builders`).
        seed: seed for the tasks that sample (word-list and category tasks).
        n_generated: pairs made for sampled tasks (capitalize, letters, choose_*, alphabetically_*,
            category tasks; the latter capped at 20 per category word).
        wordnet_dir / freedict_dir / words_file: override where the resources are looked for.
        min_pairs: a task with fewer clean pairs is skipped (and reported) rather than written.

    Returns:
        ``{task: number of pairs written}`` or ``{task: "skipped: <reason>"}`` for skipped tasks.
        A warning names the package to install for each task skipped for a missing resource.
    """
    names = list(BUILDERS) if names is None else list(names)
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        raise TaskError(f"unknown task(s) {', '.join(unknown)}; available: {', '.join(BUILDERS)}")
    out_dir = Path(out_dir)
    made = _check_out(out_dir, names)
    res = Resources(wordnet_dir, freedict_dir, words_file, seed, n_generated)
    summary: dict[str, int | str] = {}
    for name in names:
        b = BUILDERS[name]
        try:
            pairs = _clean(b.make(res))
        except ResourceMissing as exc:
            summary[name] = f"skipped: {exc}"
            warnings.warn(f"iclscope.tasks.build: skipping task {name!r}: {exc}", stacklevel=2)
            continue
        if len(pairs) < min_pairs:
            summary[name] = f"skipped: only {len(pairs)} clean pairs (< min_pairs={min_pairs})"
            warnings.warn(f"iclscope.tasks.build: skipping task {name!r}: {summary[name]}", stacklevel=2)
            continue
        # the word-list tasks use WordNet only to pick common words, not with a words_file of the user's
        keys = [k for k in b.sources if not (k == "wordnet" and "words" in b.sources and words_file)]
        meta = {
            "name": name,
            "kind": b.kind,
            "source": "; ".join(SOURCES[k].name for k in keys),
            "source_keys": keys,
            "license": "; ".join(f"{SOURCES[k].key}: {SOURCES[k].license}" for k in keys),
            "description": b.description,
            "n_pairs": len(pairs),
            "builder": __name__,
            "seed": seed,
        }
        if not (out_dir / MARKER).exists():  # the first file: the folder becomes ours, marked before any write
            _claim(out_dir)
        if name not in made:
            made.append(name)
            store.write_json(out_dir / MARKER, {"iclscope": "tasks", "builder": __name__, "files": made})
        save_task(Task(name, pairs, meta), out_dir)
        summary[name] = len(pairs)
    if made:
        _write_sources(out_dir)
    return summary
