"""A small report builder: sections of text, tables and images, written as Markdown and HTML.

The demo fills a :class:`Report`; :meth:`Report.write` renders ``report.md`` and converts the same
Markdown to ``report.html`` with the ``markdown`` package (tables extension), so both say the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeattn.atomic import write_text_atomic

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: .15em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: .5em 0; }
code { background: #f5f5f5; padding: 0 .25em; }
.ok { color: #1a7f37; } .failed { color: #cf222e; } .skipped { color: #9a6700; }
"""


def fmt(value: Any, digits: int = 4) -> str:
    """Format a number for a table: compact floats, thousands separators for big ints."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e4 or abs(value) < 1e-3:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def md_cell(value: Any) -> str:
    """One table cell: ``fmt(value)`` on one line, with ``|`` escaped and ``&``/``<`` as HTML entities, so that
    the Markdown table keeps its columns and the HTML shows the same text (``<x>`` is not taken for a tag)."""
    text = " ".join(fmt(value).split())
    text = re.sub(r"&(?=[#A-Za-z])", "&amp;", text)  # what HTML would read as an entity or a tag
    text = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)
    return text.replace("|", "\\|")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-style Markdown table."""
    lines = ["| " + " | ".join(md_cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(md_cell(v) for v in row) + " |")
    return "\n".join(lines)


@dataclass
class Section:
    title: str
    blocks: list[str] = field(default_factory=list)

    def text(self, text: str) -> Section:
        self.blocks.append(text.strip())
        return self

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Section:
        self.blocks.append(md_table(headers, rows))
        return self

    def image(self, path: str, alt: str) -> Section:
        self.blocks.append(f"![{alt}]({path})")
        return self


@dataclass
class Report:
    title: str
    intro: str = ""
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        sec = Section(title)
        self.sections.append(sec)
        return sec

    def replace(self, old: str, new: str) -> Report:
        """Replace ``old`` by ``new`` in the intro and every block (e.g. a staging folder's path by the folder
        the report is published as)."""
        self.intro = self.intro.replace(old, new)
        for sec in self.sections:
            sec.blocks = [block.replace(old, new) for block in sec.blocks]
        return self

    def markdown(self) -> str:
        parts = [f"# {self.title}", self.intro.strip()]
        for sec in self.sections:
            parts.append(f"## {sec.title}")
            parts.extend(sec.blocks)
        return "\n\n".join(p for p in parts if p) + "\n"

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """Write report.md and report.html into ``out_dir`` atomically; return both paths."""
        import html as html_lib

        import markdown

        text = self.markdown()
        body = markdown.markdown(text, extensions=["tables", "fenced_code"])
        html = (
            "<!doctype html>\n<html><head><meta charset='utf-8'>"
            f"<title>{html_lib.escape(self.title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
        )
        md_path, html_path = out_dir / "report.md", out_dir / "report.html"
        write_text_atomic(md_path, text)
        write_text_atomic(html_path, html)
        return md_path, html_path
