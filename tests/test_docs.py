"""The user-facing documents (README.md, BENCHMARKS.md, docs/*.md) link only to files a user of the repository
has: every relative link and every ``docs/...md`` mention resolves to a file here (and its ``#anchor`` to a
heading of that file), and nothing points at the project's internal notes (``../shared``, the spec, the
dataset notes, the papers' seed files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]

_LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target)
_DOC_MENTION = re.compile(r"(?<![\w/.])(docs/[\w./-]+\.md)(#[\w-]+)?")  # docs/x.md[#anchor] in prose or code
_INTERNAL = re.compile(r"\.\./shared|\bSPEC\b|SPEC\.md|DATASETS\.md|\bseeds?/|\bseed 00\d")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*?|_(?=\w)|(?<=\w)_", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    text = _FENCE.sub("", text)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M)}


def problems(path: Path, text: str, root: Path = ROOT) -> list[str]:
    """What is wrong with the links and mentions of ``text`` (the contents of ``path``)."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        m = _INTERNAL.search(line)
        if m:
            out.append(f"{path.name}:{n}: mentions {m.group(0)!r}, which a user of the repository does not have")
    at = lambda m: text[: m.start()].count("\n") + 1  # noqa: E731
    targets = [(m.group(1), at(m), path.parent) for m in _LINK.finditer(text)]  # relative to the file
    targets += [(m.group(1) + (m.group(2) or ""), at(m), root) for m in _DOC_MENTION.finditer(text)]  # to the root
    for target, n, base in targets:
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        if not file_part:  # an anchor of this document
            if anchor not in anchors(text):
                out.append(f"{path.name}:{n}: no heading with anchor #{anchor} here")
            continue
        dest = (base / file_part).resolve()
        if root.resolve() not in dest.parents:
            out.append(f"{path.name}:{n}: {target!r} leaves the repository")
        elif not dest.exists():
            out.append(f"{path.name}:{n}: {target!r} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            out.append(f"{path.name}:{n}: {target!r}: no heading with anchor #{anchor} in {dest.name}")
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_document_links_resolve_in_the_repository(doc):
    assert problems(doc, doc.read_text(encoding="utf-8")) == []


def test_the_papers_and_datasets_pages_exist_and_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("docs/datasets.md", "docs/papers.md", "docs/cache-format.md", "docs/dependencies.md"):
        assert (ROOT / page).is_file(), page
    assert "](docs/datasets.md)" in readme and "](docs/papers.md)" in readme


def test_every_adapter_and_head_has_its_section():
    """docs/datasets.md covers every dataset adapter; docs/papers.md names every registered head."""
    from emo.datasets import ADAPTERS
    from emo.heads.registry import BUILTIN_HEADS

    datasets = (ROOT / "docs" / "datasets.md").read_text(encoding="utf-8")
    sections = {line.split()[1].rstrip(":") for line in datasets.splitlines() if line.startswith("## ")}
    sections |= {"csv"} if "folder" in sections else set()  # "## folder and csv: your own data"
    assert set(ADAPTERS) - sections == set()
    papers = (ROOT / "docs" / "papers.md").read_text(encoding="utf-8")
    names = sorted(BUILTIN_HEADS)  # emo's own heads (tests register toy ones)
    assert names and [n for n in names if f"`{n}`" not in papers] == []


def test_the_checker_catches_what_it_is_for(tmp_path):
    """A missing file, a missing anchor, a path out of the repository and the internal notes are all found;
    a good link, an anchor of the same file and a web address pass."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## PE-CLIP\n\ntext\n", encoding="utf-8")
    good = "[a](docs/a.md) [b](docs/a.md#pe-clip) [c](#here) [d](https://example.org/x) `docs/a.md#title`\n# Here\n"
    assert problems(tmp_path / "R.md", good, root=tmp_path) == []
    bad = {
        "[x](docs/missing.md)": "does not exist",
        "[x](docs/a.md#nope)": "no heading",
        "[x](../outside.md)": "leaves the repository",
        "see ../shared/SPEC.md": "does not have",
        "(SPEC §4.6)": "does not have",
        "the seeds/ folder": "does not have",
        "(seed 003)": "does not have",
        "`docs/gone.md`": "does not exist",
        "[x](#nowhere)": "no heading",
    }
    for text, expected in bad.items():
        found = problems(tmp_path / "R.md", text + "\n", root=tmp_path)
        assert len(found) >= 1 and expected in found[0], (text, found)
