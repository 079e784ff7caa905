"""docs/notes-to-code.md stays true: every Python block runs, every name and link it gives exists.

Each ```python block is one test, named by the section heading above it, and
runs in a fresh namespace (the guide's intro promises that every block can be
copied alone).
"""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE_PATH = ROOT / "docs" / "notes-to-code.md"
GUIDE = GUIDE_PATH.read_text(encoding="utf-8")


def _snippets():
    """``(test id, code)`` for every Python block, the id made from its section's heading."""
    heading, seen, out = "intro", {}, []
    for match in re.finditer(r"^(#{2,3}) ([^\n]+)$|^```python\n(.*?)^```", GUIDE, re.M | re.S):
        if match.group(2):
            heading = re.sub(r"[^a-z0-9]+", "-", match.group(2).lower()).strip("-")[:60]
            continue
        seen[heading] = seen.get(heading, 0) + 1
        name = heading if seen[heading] == 1 else f"{heading}-{seen[heading]}"
        out.append(pytest.param(match.group(3), id=name))
    return out


SNIPPETS = _snippets()


def test_the_guide_has_snippets():
    assert len(SNIPPETS) >= 15


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, request):
    scope = {"__name__": "__guide__"}
    exec(compile(code, f"docs/notes-to-code.md ({request.node.callspec.id})", "exec"), scope)


def _resolve(dotted):
    """The object a dotted ``jaxseq.module.attr...`` name refers to (longest importable module first)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


NAMES = sorted(set(re.findall(r"`(jaxseq(?:\.\w+)+)`", GUIDE)))


def test_the_guide_names_functions():
    assert len(NAMES) >= 15


@pytest.mark.parametrize("name", NAMES)
def test_named_function_exists(name):
    assert _resolve(name) is not None      # raises (ImportError, AttributeError) when it is gone


LINKS = sorted(set(re.findall(r"\]\(((?:\.\./|\./)[^)#]+)(?:#[^)]*)?\)", GUIDE)))


@pytest.mark.parametrize("target", LINKS)
def test_relative_link_exists(target):
    assert (GUIDE_PATH.parent / target).resolve().exists(), target


def _slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_contents_anchors_name_sections():
    anchors = {_slug(h) for h in re.findall(r"^#{1,3} (.+)$", GUIDE, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", GUIDE)
    assert links and not [a for a in links if a not in anchors]


def test_linked_from_readme_and_design():
    assert "docs/notes-to-code.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "notes-to-code.md" in (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
