#!/usr/bin/env python3
"""Measure how far task files built by ``iclscope tasks build`` agree with Todd et al.'s files.

Usage::

    python tools/compare_todd_tasks.py TODD_DATASET_FILES BUILT_FOLDER [--json]

``TODD_DATASET_FILES`` is the ``dataset_files/`` folder of https://github.com/ericwtodd/function_vectors
(its ``abstractive/`` and ``extractive/`` subfolders are searched); ``BUILT_FOLDER`` is a folder written
by ``iclscope.tasks.build_tasks``. Nothing is copied from either folder: the script only counts.

Per task it reports the size of each file, the inputs both files have (matched after stripping and
case-folding), and on those shared inputs the fraction whose outputs agree, exactly and
case-insensitively (a Todd output that is a list agrees when any of its entries does). For extractive
tasks, whose inputs are random word lists that rarely coincide, it also reports how many of the words
in Todd's lists occur in ours, and for the odd-one-out category tasks the fraction of the words both
files use whose role (target or distractor) is the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# (iclscope task, Todd task): iclscope's letter tasks map to Todd's closest ones (his first-letter
# task upper-cases the letter; his last-letter task upper-cases the input word).
TASK_MAP: list[tuple[str, str]] = [
    ("antonym", "antonym"),
    ("synonym", "synonym"),
    ("country-capital", "country-capital"),
    ("present-past", "present-past"),
    ("singular-plural", "singular-plural"),
    ("english-french", "english-french"),
    ("capitalize", "capitalize"),
    ("first-letter", "capitalize_first_letter"),
    ("last-letter", "lowercase_last_letter"),
    ("choose_first_of_5", "choose_first_of_5"),
    ("choose_middle_of_5", "choose_middle_of_5"),
    ("choose_last_of_5", "choose_last_of_5"),
    ("alphabetically_first_3", "alphabetically_first_3"),
    ("alphabetically_last_3", "alphabetically_last_3"),
    ("animal_v_object_3", "animal_v_object_3"),
    ("animal_v_object_5", "animal_v_object_5"),
    ("fruit_v_animal_3", "fruit_v_animal_3"),
    ("color_v_animal_3", "color_v_animal_3"),
]
CATEGORY_TASKS = {"animal_v_object_3", "animal_v_object_5", "fruit_v_animal_3", "color_v_animal_3"}
LIST_SEP = ", "


@dataclass
class Agreement:
    """One task's comparison. Fractions are None when there is nothing to divide by."""

    task: str
    todd_task: str
    n_ours: int
    n_todd: int
    shared_inputs: int
    exact: float | None
    case_insensitive: float | None
    words_shared: float | None = None  # extractive: fraction of Todd's list words found in our lists
    role_agreement: float | None = None  # category tasks: same role (target/distractor) on shared words


def _key(s: str) -> str:
    return s.strip().casefold()


def load_pairs(path: str | Path) -> list[tuple[str, list[str]]]:
    """``[(input, [acceptable outputs])]`` from a Todd-format JSON file (an output may be a list)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for e in data:
        y = e["output"]
        out.append((str(e["input"]), [str(v) for v in y] if isinstance(y, list) else [str(y)]))
    return out


def compare_pairs(ours: list[tuple[str, list[str]]], todd: list[tuple[str, list[str]]],
                  task: str = "", todd_task: str = "") -> Agreement:
    """Agreement of our pairs with Todd's on the inputs both have.

    Inputs are matched after ``strip().casefold()``; when a file repeats an input its first entry
    counts. Our output (the first when several) agrees exactly when it equals one of Todd's outputs,
    case-insensitively when it does so after case-folding.
    """
    mine: dict[str, str] = {}
    for x, ys in ours:
        mine.setdefault(_key(x), ys[0])
    theirs: dict[str, list[str]] = {}
    for x, ys in todd:
        theirs.setdefault(_key(x), ys)
    shared = sorted(set(mine) & set(theirs))
    exact = sum(mine[k].strip() in [y.strip() for y in theirs[k]] for k in shared)
    folded = sum(_key(mine[k]) in [_key(y) for y in theirs[k]] for k in shared)
    n = len(shared)
    return Agreement(task, todd_task, len(ours), len(todd), n,
                     exact / n if n else None, folded / n if n else None)


def _roles(pairs: list[tuple[str, list[str]]]) -> tuple[set[str], set[str]]:
    """(all words used in the lists, words that are ever the answer)."""
    words, targets = set(), set()
    for x, ys in pairs:
        words.update(_key(w) for w in x.split(LIST_SEP))
        targets.update(_key(y) for y in ys)
    return words, targets


def compare_words(ours: list[tuple[str, list[str]]], todd: list[tuple[str, list[str]]],
                  category: bool) -> tuple[float | None, float | None]:
    """(fraction of Todd's list words that our lists use, role agreement on shared words or None)."""
    w_ours, t_ours = _roles(ours)
    w_todd, t_todd = _roles(todd)
    shared = w_ours & w_todd
    frac = len(shared) / len(w_todd) if w_todd else None
    if not category:
        return frac, None
    same = sum((w in t_ours) == (w in t_todd) for w in shared)
    return frac, (same / len(shared) if shared else None)


def find_todd_file(folder: Path, name: str) -> Path | None:
    for sub in ("", "abstractive", "extractive"):
        p = folder / sub / f"{name}.json"
        if p.is_file():
            return p
    return None


def compare_folders(todd_dir: str | Path, ours_dir: str | Path,
                    task_map: list[tuple[str, str]] | None = None) -> list[Agreement]:
    """Compare every mapped task present in both folders (missing ones are left out)."""
    todd_dir, ours_dir = Path(todd_dir), Path(ours_dir)
    rows = []
    for ours_name, todd_name in task_map or TASK_MAP:
        p_ours, p_todd = ours_dir / f"{ours_name}.json", find_todd_file(todd_dir, todd_name)
        if not p_ours.is_file() or p_todd is None:
            continue
        ours, todd = load_pairs(p_ours), load_pairs(p_todd)
        row = compare_pairs(ours, todd, ours_name, todd_name)
        if all(LIST_SEP in x for x, _ in todd[:50]):  # extractive word lists
            row.words_shared, row.role_agreement = compare_words(ours, todd, ours_name in CATEGORY_TASKS)
        rows.append(row)
    return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def markdown(rows: list[Agreement]) -> str:
    lines = ["| iclscope task | Todd task | ours | Todd | shared inputs | agree exact | agree ignoring case "
             "| Todd's list words in ours | same role |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.task} | {r.todd_task} | {r.n_ours} | {r.n_todd} | {r.shared_inputs} | {_pct(r.exact)} "
                     f"| {_pct(r.case_insensitive)} | {_pct(r.words_shared)} | {_pct(r.role_agreement)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("todd_dir", type=Path, help="Todd et al.'s dataset_files/ folder")
    ap.add_argument("ours_dir", type=Path, help="a folder written by `iclscope tasks build`")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a Markdown table")
    args = ap.parse_args(argv)
    for d in (args.todd_dir, args.ours_dir):
        if not d.is_dir():
            print(f"compare_todd_tasks: {d} is not a folder", file=sys.stderr)
            return 2
    rows = compare_folders(args.todd_dir, args.ours_dir)
    print(json.dumps([asdict(r) for r in rows], indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
