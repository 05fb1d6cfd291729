"""The documentation pages under docs/concepts, docs/patterns and docs/gotchas are tested.

Every page's ```python blocks run in order, in one namespace per page, in a fresh working folder; a
block whose first line is ``# not run`` is skipped. A page must open (after its title and at most one
short paragraph) with a runnable python block, end with a "See also" section, be listed in
docs/README.md, and link only to files that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parent.parent / "docs"
SECTIONS = ("concepts", "patterns", "gotchas")
PAGES = sorted(p for s in SECTIONS for p in (DOCS / s).glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a page, in order, without those marked ``# not run``."""
    return [body for lang, body in FENCE.findall(text)
            if lang == "python" and not body.lstrip().startswith("# not run")]


def test_the_pages_exist():
    names = {str(p.relative_to(DOCS)) for p in PAGES}
    for want in ("concepts/sites.md", "concepts/interventions.md", "concepts/gradients.md", "concepts/final-token.md",
                 "patterns/many-heads-one-pass.md", "patterns/mean-ablation.md", "patterns/clamps-in-toml.md",
                 "patterns/checkpoint-series.md", "gotchas/generation-positions.md", "gotchas/padding.md",
                 "gotchas/prefix-kv.md"):
        assert want in names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_runs(page, tmp_path, monkeypatch):
    blocks = python_blocks(page.read_text())
    assert blocks, f"{page.name} has no runnable python block"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{page.relative_to(DOCS)}[block {i}]", "exec")
        exec(code, namespace)  # an exception here fails the page, with the block named in the traceback


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_shape(page):
    """Smallest working example first, then prose, then "See also"; every relative link resolves."""
    text = page.read_text()
    lines = text.splitlines()
    assert lines[0].startswith("# "), f"{page.name}: the first line must be the title"
    first_code = text.find("```python")
    assert first_code >= 0, f"{page.name}: no python example"
    before = text[len(lines[0]):first_code].strip()
    assert len(before) <= 400 and "\n## " not in before, f"{page.name}: the example must come first"
    assert re.search(r"^## See also", text, re.M), f"{page.name}: no 'See also' section"
    for target, _ in LINK.findall(text):
        if "://" in target:
            continue
        assert (page.parent / target).resolve().exists(), f"{page.name}: broken link {target}"


def test_index_lists_every_page():
    index = (DOCS / "README.md").read_text()
    linked = {(DOCS / t).resolve() for t, _ in LINK.findall(index) if "://" not in t}
    for page in PAGES:
        assert page.resolve() in linked, f"docs/README.md does not link {page.relative_to(DOCS)}"
    for target in linked:
        assert target.exists(), f"docs/README.md links a missing file {target}"
    for existing in ("architecture.md", "tasks.md", "dynamics.md"):
        assert (DOCS / existing).resolve() in linked


def test_not_run_blocks_are_skipped():
    text = "```python\nx = 1\n```\n\n```python\n# not run\nraise SystemExit\n```\n\n```bash\nls\n```\n"
    assert python_blocks(text) == ["x = 1\n"]
