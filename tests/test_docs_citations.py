"""Every citation in the repository points at something inside it.

Scanned: src/, tests/ and benchmarks/ (Python), pyproject.toml, docs/ (Markdown) and README.md. A citation has one form,
`docs/FILE.md#anchor`, the anchor being the GitHub anchor of one of FILE's headings
(docs/THEORY.md#units-and-conventions). This test fails on:

- citations of the specification and style notes that live outside the repository (their file
  names, "spec §N", "spec README");
- a `docs/FILE.md` that does not exist, or an `#anchor` that is none of its headings;
- a Markdown link to a missing file or heading (relative links and same-page anchors);
- the older `docs/FILE.md, "Heading"` form (use the anchor);
- a bare `§N` in Python (only paper sections, `[AR] §4.2` or `paper §4.1`, are cited that way),
  or in Markdown unless the file has its own section N (docs/RESULTS.md numbers its sections);
- an invariant `I<n>` that docs/THEORY.md#invariants does not define.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The external specification's file names, spelled in pieces so this file does not cite them.
EXTERNAL = [re.compile(p) for p in (
    r"(?<![\w/])" + "attnres" + r"\.md\b",
    r"(?<![\w/])" + "kimi_linear" + r"\.md\b",
    r"(?<![\w/])" + "optim" + r"\.md\b",
    r"(?<![\w/])" + "targets" + r"\.md\b",
    r"(?i)\bspec\s*" + "§",
    r"(?i)\bspec\s+" + "README",
    r"shared/" + "spec",
    r"(?<![\w/])" + "STYLE" + r"\.md\b",
)]
CITATION = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
OLD_STYLE = re.compile(r"docs/[\w.-]+\.md,?\s+\"")
MD_LINK = re.compile(r"\]\(([^)\s]*)\)")
PAPER_SECTION = re.compile(r"(?:\[(?:AR|KL|ML|K2)\]|paper|[Pp]aper's)\s+§[\w.]+"
                           r"(?:(?:\s*,\s*|\s+and\s+|\s*[–-]\s*)§?[\w.]+)*")
BARE_SECTION = re.compile(r"§\s*([\w.]+)")
INVARIANT = re.compile(r"\bI(\d{1,2})\b")


def scanned_files() -> list[Path]:
    files = sorted((ROOT / "src").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    files += sorted((ROOT / "benchmarks").rglob("*.py")) + [ROOT / "pyproject.toml"]
    files += sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
    # this file plants bad citations on purpose (test_a_planted_bad_citation_fails)
    return [f for f in files if f.is_file() and f != Path(__file__).resolve()]


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation and symbols dropped, spaces to '-'."""
    out = []
    for ch in heading.strip().lower():
        if ch == " ":
            out.append("-")
        elif ch in "-_" or unicodedata.category(ch)[0] in "LMN":
            out.append(ch)
    return "".join(out)


def without_fences(text: str) -> str:
    """`text` with the lines of fenced code blocks blanked (their line count kept)."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            out.append("")
        else:
            out.append("" if fenced else line)
    return "\n".join(out)


def headings(path: Path) -> list[str]:
    """The heading texts of a Markdown file, fenced code blocks skipped."""
    found, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)):
            found.append(m.group(1))
    return found


def anchors(path: Path) -> set[str]:
    """Every anchor of the file, duplicates numbered as GitHub does (name, name-1, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for text in headings(path):
        a = github_anchor(text)
        n = seen.get(a, 0)
        out.add(a if n == 0 else f"{a}-{n}")
        seen[a] = n + 1
    return out


def invariants_defined() -> set[str]:
    """The invariant numbers in the table of docs/THEORY.md's "Invariants" section."""
    text = (ROOT / "docs" / "THEORY.md").read_text(encoding="utf-8")
    section = text.split("\n## Invariants", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| (I\d+) \|", section, flags=re.M))


def check_text(path: Path, text: str) -> list[str]:
    """Problems in `text`, which is (or stands for) the contents of `path`."""
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    problems: list[str] = []

    def where(pos: int) -> str:
        return f"{rel}:{text.count(chr(10), 0, pos) + 1}"

    for pattern in EXTERNAL:
        for m in pattern.finditer(text):
            problems.append(f"{where(m.start())}: cites the external specification: {m.group(0)!r}")
    for m in OLD_STYLE.finditer(text):
        problems.append(f"{where(m.start())}: cite a section as docs/FILE.md#anchor: {m.group(0)!r}")
    for m in CITATION.finditer(text):
        name, anchor = m.groups()
        target = ROOT / "docs" / name
        if not target.is_file():
            problems.append(f"{where(m.start())}: no such file docs/{name}")
        elif anchor and anchor not in anchors(target):
            problems.append(f"{where(m.start())}: docs/{name} has no heading with anchor #{anchor}")
    if path.suffix == ".md":
        for m in MD_LINK.finditer(without_fences(text)):
            link = m.group(1)
            if re.match(r"[a-z]+:", link) or not link:
                continue
            file_part, _, anchor = link.partition("#")
            target = (path.parent / file_part).resolve() if file_part else path
            if not target.exists():
                problems.append(f"{where(m.start())}: link to a missing file {link!r}")
            elif anchor and target.suffix == ".md" and anchor not in anchors(target):
                problems.append(f"{where(m.start())}: link to a missing heading {link!r}")
    # bare section signs: Python may cite only paper sections; Markdown also its own sections
    stripped = PAPER_SECTION.sub(lambda m: " " * len(m.group(0)), text)
    own = {h.split()[0].rstrip(".") for h in headings(path)} if path.suffix == ".md" else set()
    for m in BARE_SECTION.finditer(stripped):
        if m.group(1).rstrip(".") not in own:
            problems.append(f"{where(m.start())}: bare section reference {m.group(0)!r}; "
                            f"cite docs/FILE.md#anchor (or [AR] §N for the paper)")
    defined = invariants_defined()
    for m in INVARIANT.finditer(text):
        if m.group(0) not in defined:
            problems.append(f"{where(m.start())}: invariant {m.group(0)} is not defined in "
                            f"docs/THEORY.md#invariants")
    return problems


def test_every_citation_resolves_inside_the_repository():
    problems = [p for f in scanned_files() for p in check_text(f, f.read_text(encoding="utf-8"))]
    assert not problems, "\n".join(problems)


def test_the_cited_docs_exist_with_their_sections():
    for name in ("THEORY", "BACKBONE", "OPTIM", "TARGETS"):
        assert (ROOT / "docs" / f"{name}.md").is_file()
    assert {f"I{n}" for n in range(1, 14)} <= invariants_defined()
    assert "two-phase-computation" in anchors(ROOT / "docs" / "THEORY.md")


@pytest.mark.parametrize("bad", [
    "see spec " + "§4",
    "see the " + "attnres" + ".md rules",
    "docs/NOPE.md",
    "docs/THEORY.md#no-such-heading",
    'docs/DESIGN.md, "Exact drop-in at step 0"',
    "the bookkeeping of §4",
    "invariant I99",
])
def test_a_planted_bad_citation_fails(bad):
    # the checker must be able to fail: each of these is reported in an otherwise clean file
    fake = ROOT / "src" / "attnres" / "planted.py"
    assert check_text(fake, f'"""{bad}"""\n')
    assert not check_text(fake, '"""docs/THEORY.md#two-phase-computation, [AR] §4.2, I7"""\n')


def test_github_anchors():
    assert github_anchor("The read parameters' learning rate (`residual.lr_mult`)") == \
        "the-read-parameters-learning-rate-residuallr_mult"
    assert github_anchor("A2. Scaling-law fits and compute advantage") == \
        "a2-scaling-law-fits-and-compute-advantage"
    assert github_anchor("0. What changed in this round, and why") == "0-what-changed-in-this-round-and-why"
