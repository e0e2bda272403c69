"""The documentation holds together: every relative link in README.md and docs/ reaches a file
(and its #anchor, a heading of that file), and no project text points at the tracker or at a
planning document instead of saying what it means."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (m := re.match(r"#{1,6} (.+)", line)):
            found.add(anchor(m.group(1)))
    return found


def broken_links(path: Path) -> list[str]:
    broken = []
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))  # no links in code blocks
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{path.relative_to(ROOT)}: {target} (no such file)")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    return broken


def test_relative_links_in_readme_and_docs_resolve() -> None:
    broken = [b for path in markdown_files() for b in broken_links(path)]
    assert not broken, "\n".join(broken)


def test_the_link_checker_finds_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "docs" / "page.md"
    page.parent.mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A heading, with `code`\n")
    page.write_text("[ok](other.md#a-heading-with-code) [gone](missing.md) [bad](other.md#nope)\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert broken_links(page) == [
            "docs/page.md: missing.md (no such file)",
            "docs/page.md: other.md#nope (no such heading)",
        ]
    finally:
        ROOT = saved


# The project's text says what it means; a number in a tracker or a planning document means
# nothing to a reader of the code or the docs. "rq issue 1968" style references to other
# projects' trackers are fine.
TRACKER_WORDS = re.compile(r"(?<![\w-])(?<!rq )(issues? \d+|issue-\d+|the (product )?brief)\b", re.IGNORECASE)


TEXT_SUFFIXES = (".py", ".md", ".cfg", ".toml", ".service", ".yaml", ".yml", ".txt", "")


def test_no_project_text_refers_to_tracker_issues_or_briefs() -> None:
    files = subprocess.run(
        ["git", "ls-files", "README.md", "DEVELOPERS.md", "docs", "worker", "tools", "bench", "tests", "deploy",
         "Containerfile", "Makefile", "setup.cfg", "pyproject.toml"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix not in TEXT_SUFFIXES or not path.is_file():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if TRACKER_WORDS.search(line) and "TRACKER_WORDS" not in line:
                hits.append(f"{name}:{n}: {line.strip()[:120]}")
    assert not hits, "\n".join(hits)
