"""mkdocs hook: the site's prose pages are the README's sections, cut at build time (the README
stays the one text; nothing is copied into docs/)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parents[1] / "README.md"

# page -> the README's `## ` sections it holds ("" is the text before the first section; "The CLI"
# stops where its `### Data layouts` subsection starts, which is a page of its own)
PAGES: dict[str, list[str]] = {
    "index.md": ["", "Install and the two commands"],
    "cli.md": ["The CLI"],
    "data.md": ["Data layouts"],
    "weights.md": ["Pretrained weights"],
    "scaling.md": ["Scaling out"],
    "extending.md": ["Python", "Adding a domain", "Layout"],
    "notebooks.md": ["Notebooks"],
    "results.md": ["Benchmarks", "Results", "References"],
}
SUBPAGES = {"Data layouts"}  # `### ` subsections that are pages of their own
LINKS = {"#results": "results.md#results"}  # README-internal links that now cross pages


def sections(text: str) -> dict[str, str]:
    """The README cut at its `## ` headings (and at the `### ` headings in SUBPAGES), outside code fences."""
    out: dict[str, list[str]] = {"": []}
    current, fenced = "", False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"(##|###) (.+)", line) if not fenced else None
        if heading and (heading.group(1) == "##" or heading.group(2) in SUBPAGES):
            current = heading.group(2).strip()
            if current in out:
                raise ValueError(f"{README}: two sections called {current!r}")
            out[current] = [line]
        else:
            out[current].append(line)
    return {name: "\n".join(lines).strip() + "\n" for name, lines in out.items()}


def page_text(parts: dict[str, str], names: list[str]) -> str:
    """One page: its sections one heading level up, README-internal links pointed across pages."""
    missing = [n for n in names if n not in parts]
    if missing:
        raise ValueError(f"{README} has no section {missing}: update PAGES in {__file__}")
    text = "\n\n".join(parts[n] for n in names)
    for old, new in LINKS.items():
        text = text.replace(f"]({old})", f"]({new})")
    fenced, lines = False, []
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{2,6} ", line):
            line = line[1:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def on_files(files: Files, config: Any) -> Files:
    """Add the README's pages to the site."""
    parts = sections(README.read_text())
    for page, names in PAGES.items():
        files.append(File.generated(config, page, content=page_text(parts, names)))
    return files
