"""Citations resolve inside the repository: every bracket tag is defined in docs/sources.md.

Rules (see docs/sources.md):
* a tag is ``[`` + uppercase words joined by ``-`` + ``]`` with at least two characters (``[NKI-T2]``,
  ``[KLR]``), not preceded by a word character, ``]`` or ``)`` (indexing and type hints: ``x[N]``,
  ``list[T]``) and not followed by ``(`` (markdown links). Single capitals (``[H]``, ``[T, H]``) are shape
  legends. Every tag used in a tracked .py/.md file must be defined in docs/sources.md;
* no file cites a file outside the repository: the four reference files of the original research notes,
  ``../shared`` or an absolute machine path (/work/, /tmp/, /root/, /home/, /Users/);
* every docs/sources.md entry names a URL, or a GitHub repository + path + commit;
* every defined tag is used somewhere outside docs/sources.md.
Notebooks are jupytext .py files, so they are covered by the .py scan.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "docs" / "sources.md"

TAG = re.compile(r"(?<![\w\])])\[([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)\](?!\()")
# A tag used in prose, but none of these is a citation.
NOT_CITATIONS: frozenset[str] = frozenset()
OUTSIDE = re.compile(
    r"\b(?:trainium|nki-api|qwen3-moe|prior-art)\.md\b"
    r"|\.\./shared\b"
    r"|(?<![\w.:/])/(?:work|tmp|root|home|Users)/"
)
ENTRY = re.compile(r"^\|\s*\[([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)\]\s*\|(.*?)\|(.*)\|\s*$")
URL = re.compile(r"https?://\S+")
REPO_PATH_COMMIT = re.compile(r"\b[\w.-]+/[\w.-]+\b.*`[^`]+\.\w+`.*\b[0-9a-f]{7,40}\b")


def _tracked_files() -> list[Path]:
    """Tracked plus new (not ignored) .py/.md files that exist in the working tree."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py", "*.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted({ROOT / p for p in out.splitlines() if (ROOT / p).is_file()})


def _lines(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1))


def _entries() -> dict[str, tuple[int, str]]:
    """Tag -> (line number, source cell) of the docs/sources.md tag table."""
    entries: dict[str, tuple[int, str]] = {}
    for no, line in _lines(SOURCES):
        m = ENTRY.match(line)
        if m:
            assert m.group(1) not in entries, f"docs/sources.md:{no}: [{m.group(1)}] defined twice"
            entries[m.group(1)] = (no, m.group(2))
    return entries


def _uses() -> dict[str, list[str]]:
    """Tag -> ["file:line", ...] over every scanned file except docs/sources.md."""
    uses: dict[str, list[str]] = {}
    for path in _tracked_files():
        if path in (SOURCES, Path(__file__).resolve()):  # this file holds regexes, not citations
            continue
        rel = path.relative_to(ROOT)
        for no, line in _lines(path):
            for tag in TAG.findall(line):
                if len(tag) >= 2 and tag not in NOT_CITATIONS:
                    uses.setdefault(tag, []).append(f"{rel}:{no}")
    return uses


def test_tag_syntax_ignores_code_and_links():
    text = "x[N] list[T] [T, H] [V] [link](https://a.b) a[IDX] ([NKI-T2]/[PERF]) [KLR]: [DMA-BW],"
    assert TAG.findall(text) == ["V", "NKI-T2", "PERF", "KLR", "DMA-BW"]
    assert OUTSIDE.search("see trainium.md §3") and OUTSIDE.search("/work/shared/x")
    assert not OUTSIDE.search("https://example.com/tmp/x") and not OUTSIDE.search("docs/sources.md")


def test_every_entry_has_a_public_source():
    entries = _entries()
    assert len(entries) >= 10, "docs/sources.md: tag table not found"
    bad = [
        f"docs/sources.md:{no}: [{tag}] has neither a URL nor a repository + path + commit"
        for tag, (no, cell) in entries.items()
        if not URL.search(cell) and not REPO_PATH_COMMIT.search(cell)
    ]
    assert not bad, "\n".join(bad)


def test_every_tag_used_is_defined():
    defined = set(_entries())
    bad = [
        f"{where}: [{tag}] is not defined in docs/sources.md"
        for tag, wheres in sorted(_uses().items())
        if tag not in defined
        for where in wheres
    ]
    assert not bad, "\n".join(bad)


def test_every_defined_tag_is_used():
    used = set(_uses())
    unused = [
        f"docs/sources.md:{no}: [{tag}] is used nowhere"
        for tag, (no, _) in _entries().items()
        if tag not in used
    ]
    assert not unused, "\n".join(unused)


def test_no_citation_outside_the_repository():
    this = Path(__file__).resolve()  # this file names the forbidden patterns
    bad = [
        f"{path.relative_to(ROOT)}:{no}: {line.strip()[:100]}"
        for path in _tracked_files()
        if path != this
        for no, line in _lines(path)
        if OUTSIDE.search(line)
    ]
    assert not bad, "cites a file outside the repository:\n" + "\n".join(bad)
