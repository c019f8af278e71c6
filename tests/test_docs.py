"""The documentation: every relative link in README.md and docs/ reaches a file, and the README stays short."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_every_relative_link_reaches_a_file():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_the_readme_is_one_page_for_a_newcomer():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    assert any("bash scripts/setup.sh && .venv/bin/langprune prune" in line for line in lines)
    assert any("bash scripts/setup.sh && .venv/bin/python -m pytest -q" in line for line in lines)
