"""Text out of rich documents, as sections: HTML, PDF, Markdown and reStructuredText.

Each function returns `Section`s: a piece of the document's text and the metadata that belongs
to it (the heading path of a section, the page of a PDF page). The ingest source turns every
section into one stored document, so chunks never straddle a section or page boundary and every
hit carries its section path or page number in its metadata (hits carry their document's
metadata). The libraries are imported on use: they are the `rich` extra.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

from embedstack.errors import InvalidInput

# HTML elements that are not the page's main text
_HTML_DROP = (
    "script", "style", "noscript", "template", "nav", "header", "footer", "aside", "form",
    "svg", "iframe", "button", "select", "canvas", "object",
)  # fmt: skip
_HTML_BLOCK = frozenset(
    ("address", "article", "blockquote", "br", "caption", "dd", "div", "dl", "dt", "figcaption",
     "figure", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li", "main", "ol", "p", "pre",
     "section", "table", "td", "th", "tr", "ul")
)  # fmt: skip
_HEADINGS = {f"h{i}": i for i in range(1, 7)}
# a reST section title's adornment: one punctuation character repeated
_RST_ADORN = re.compile(r"^([!-/:-@\[-`{-~])\1{2,}\s*$")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANKS = re.compile(r"\n\s*\n\s*")


@dataclass(frozen=True)
class Section:
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class _Sections:
    """Builds sections from a stream of headings and text, tracking the heading path."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.base = base
        self.path: list[tuple[int, str]] = []
        self.parts: list[str] = []
        self.out: list[Section] = []
        self.heading_only = True

    def heading(self, level: int, title: str) -> None:
        self.close()
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, title.strip()))

    def add(self, text: str, heading: bool = False) -> None:
        self.parts.append(text)
        if not heading and text.strip():
            self.heading_only = False

    def close(self) -> None:
        text = "".join(self.parts).strip()
        # a heading with no text of its own (directly followed by a subheading) is no section:
        # its title is part of every subsection's path
        if text and not self.heading_only:
            meta = dict(self.base)
            if self.path:
                meta["section"] = " > ".join(title for _, title in self.path)
            self.out.append(Section(text, meta))
        self.parts = []
        self.heading_only = True

    def done(self) -> list[Section]:
        self.close()
        return self.out


def html_sections(data: bytes | str) -> list[Section]:
    """Main text of an HTML page split at its headings; `title` and `section` (the heading
    path, "Guide > Install") as metadata. Scripts, styles, navigation, headers, footers, asides
    and forms are dropped; `<main>` or `<article>` is preferred to the whole body when present.
    """
    from selectolax.lexbor import LexborHTMLParser

    tree = LexborHTMLParser(data if isinstance(data, str) else data.decode("utf-8", "replace"))
    title_node = tree.css_first("title")
    title = _SPACES.sub(" ", title_node.text()).strip() if title_node is not None else ""
    tree.strip_tags(list(_HTML_DROP))
    root = tree.css_first("main") or tree.css_first("article") or tree.body or tree.root
    sections = _Sections({"title": title} if title else {})
    if root is None:
        return []
    in_heading: Any = None
    for node in root.traverse(include_text=True):
        tag = node.tag
        if tag == "-text":
            text = node.text_content or ""
            if in_heading is None or not _inside(node, in_heading):
                in_heading = None
            sections.add(_SPACES.sub(" ", text), heading=in_heading is not None)
        elif tag in _HEADINGS:
            sections.heading(_HEADINGS[tag], _SPACES.sub(" ", node.text()))
            sections.add("\n", heading=True)
            in_heading = node
        elif tag in _HTML_BLOCK:
            sections.add("\n")
    return [Section(_tidy(s.text), s.metadata) for s in sections.done()]


def _inside(node: Any, ancestor: Any) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.mem_id == ancestor.mem_id:
            return True
        parent = parent.parent
    return False


def _tidy(text: str) -> str:
    lines = [line.strip() for line in text.splitlines()]
    return _BLANKS.sub("\n\n", "\n".join(line for line in lines if line)).strip()


def pdf_pages(data: bytes) -> list[Section]:
    """The text of each page of a PDF, with its 1-based `page` number (and `pages`, the count)
    as metadata; pages without a text layer (scans) give no section. A PDF that cannot be read
    raises InvalidInput naming the reason."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        count = len(reader.pages)
        out: list[Section] = []
        for number, page in enumerate(reader.pages, start=1):
            text = page.extract_text() or ""
            if text.strip():
                out.append(Section(text.strip(), {"page": number, "pages": count}))
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidInput(f"not a readable PDF ({type(exc).__name__}: {exc})") from exc
    return out


def markdown_sections(text: str) -> list[Section]:
    """A Markdown document split at its headings (ATX and setext, not inside code blocks), each
    section's text starting with its heading line; `section` is the heading path."""
    from markdown_it import MarkdownIt

    lines = text.splitlines(keepends=True)
    tokens = MarkdownIt("commonmark").parse(text)
    starts: list[tuple[int, int, int, str]] = []  # (first line, end line, level, title)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map is not None:
            title = tokens[i + 1].content if i + 1 < len(tokens) else ""
            starts.append((tok.map[0], tok.map[1], int(tok.tag[1]), title))
    return _split_lines(lines, starts)


def rst_sections(text: str) -> list[Section]:
    """A reStructuredText document split at its section titles (a title line with an underline,
    optionally an overline, of one repeated punctuation character); levels follow the order in
    which adornment styles first appear, as docutils assigns them."""
    lines = text.splitlines(keepends=True)
    styles: list[tuple[str, bool]] = []
    starts: list[tuple[int, int, int, str]] = []
    i = 0
    while i < len(lines) - 1:
        title = lines[i].strip()
        over = _RST_ADORN.match(lines[i].rstrip("\n"))
        if over and i + 2 < len(lines):
            under = _RST_ADORN.match(lines[i + 2].rstrip("\n"))
            mid = lines[i + 1].strip()
            if under and under.group(1) == over.group(1) and mid and not _RST_ADORN.match(mid):
                style = (over.group(1), True)
                styles += [style] if style not in styles else []
                starts.append((i, i + 3, styles.index(style) + 1, mid))
                i += 3
                continue
        under = _RST_ADORN.match(lines[i + 1].rstrip("\n"))
        long_enough = under is not None and len(lines[i + 1].strip()) >= len(title)
        if title and not over and under and long_enough and (i == 0 or not lines[i - 1].strip()):
            style = (under.group(1), False)
            styles += [style] if style not in styles else []
            starts.append((i, i + 2, styles.index(style) + 1, title))
            i += 2
            continue
        i += 1
    return _split_lines(lines, starts)


def _split_lines(lines: list[str], starts: list[tuple[int, int, int, str]]) -> list[Section]:
    sections = _Sections({})
    pos = 0
    for first, end, level, title in starts:
        sections.add("".join(lines[pos:first]))
        sections.heading(level, title)
        sections.add("".join(lines[first:end]), heading=True)
        pos = end
    sections.add("".join(lines[pos:]))
    return sections.done()
