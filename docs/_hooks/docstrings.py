"""griffe extension: regplug's docstrings are reStructuredText-flavoured; this turns the few
reST forms they use into Markdown before mkdocstrings renders them.

- roles (``:class:`~regplug.run.Run```) become code spans (`Run`);
- ``>>>`` examples become ``pycon`` code blocks (not text whose ``[0.1, 0.2]`` reads as a link);
- literal blocks introduced by ``::`` become code blocks;
- simple tables (columns under ``====  ====`` rules) become Markdown tables;
- field lists (``:param name: text``, ``:returns:``, ``:raises X:``) become bullet lists;
- a docs page named by its repository path (``Docs: docs/loops/torch.md``) becomes a link to
  that page of the site (the docstrings render only on the API pages, docs/api/*.md, so the
  link is relative to docs/api/; mkdocs checks it and writes its URL).

Loaded by mkdocs.yml (mkdocstrings' python handler, ``extensions``). The sources are unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

DOCS = Path(__file__).resolve().parents[1]
#: from an API page (docs/api/<page>.md) to docs/
SITE_ROOT = "../"
DOCS_PATH = re.compile(r"`{0,2}\bdocs/((?:[\w-]+/)*[\w-]+)\.md`{0,2}")

ROLE = re.compile(r":(?:py:)?(?:class|func|mod|meth|attr|data|exc|obj|const)(?:\:)?`(~?)([^`]+)`")
FIELD = re.compile(r"^(\s*):(param|parameter|arg|argument|key|keyword|returns?|raises?|yields?)"
                   r"(?:\s+([^:]+))?:(?:\s+(.*))?$")
FIELD_BULLET = re.compile(r"^\s*- \*\*")
RULE = re.compile(r"^(\s*)(=+)((?:\s+=+)+)\s*$")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target.lstrip('.')}`"


def _page_link(match: re.Match[str]) -> str:
    page = match.group(1)
    if not (DOCS / f"{page}.md").is_file():
        return match.group(0)
    titles = [line[2:].strip() for line in (DOCS / f"{page}.md").read_text().splitlines()
              if line.startswith("# ")]
    title = titles[0].replace("[", "").replace("]", "") if titles else f"{page}.md"
    return f"[{title}]({SITE_ROOT}{page}.md)"


def _links(line: str) -> str:
    return DOCS_PATH.sub(_page_link, line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _table(lines: list[str], start: int) -> tuple[list[str], int]:
    """The simple table whose top rule is lines[start]: its Markdown lines and the index of
    the line after its closing rule (or ([], start) when it is not a table)."""
    rule = lines[start]
    indent = _indent(rule)
    spans = [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]
    rules = [i for i in range(start, len(lines)) if lines[i].strip() and RULE.match(lines[i])
             and _indent(lines[i]) == indent]
    if len(rules) < 3 or rules[1] - rules[0] < 2:
        return [], start
    end = rules[2]

    def cells(line: str) -> list[str]:
        out = []
        for k, (left, _right) in enumerate(spans):
            right = spans[k + 1][0] if k + 1 < len(spans) else len(line)
            out.append(line[left:right].strip())
        return out

    header = [" ".join(c) for c in zip(*(cells(line) for line in lines[rules[0] + 1:rules[1]]))]
    rows: list[list[str]] = []
    for line in lines[rules[1] + 1:end]:
        if not line.strip():
            continue
        row = cells(line)
        if rows and not row[0]:
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], row)]
        else:
            rows.append(row)
    pad = " " * indent

    def fmt(row: list[str]) -> str:
        return pad + "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"

    table = [fmt(header), pad + "|" + "|".join(" --- " for _ in header) + "|"]
    table += [fmt(row) for row in rows]
    return table, end + 1


def to_markdown(text: str) -> str:
    """The Markdown form of one docstring."""
    lines = ROLE.sub(_role, text).splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if RULE.match(line) and (i == 0 or not lines[i - 1].strip()):
            table, after = _table(lines, i)
            if table:
                out += table
                i = after
                continue
        if stripped.startswith(">>>") and (i == 0 or not lines[i - 1].strip()):
            pad = " " * _indent(line)
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(pad):] if lines[i].startswith(pad) else lines[i])
                i += 1
            out += [pad + "```pycon", *(pad + b for b in block), pad + "```"]
            continue
        if stripped.endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip() \
                and _indent(lines[i + 2]) > _indent(line):
            intro = line.rstrip()[:-2].rstrip()
            if intro.strip():
                out.append(intro + ":")
            out.append("")
            pad = " " * _indent(line)
            inner = _indent(lines[i + 2])
            i += 2
            block = []
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) >= inner):
                block.append(lines[i][inner:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += [pad + "```", *(pad + b if b else "" for b in block), pad + "```", ""]
            continue
        field = FIELD.match(line)
        if field:
            pad, kind, names, text = field.groups()
            if kind.startswith(("return", "yield")):
                head = f"**{kind.rstrip('s')}s**"
            elif kind.startswith("raise"):
                head = f"**raises** `{(names or '').strip()}`"
            else:
                head = ", ".join(f"**`{n.strip()}`**" for n in (names or "").split(","))
            if out and out[-1].strip() and not FIELD_BULLET.match(out[-1]) \
                    and not out[-1].startswith(pad + "  "):
                out.append("")
            out.append(_links(f"{pad}- {head}: {text or ''}".rstrip()))
            i += 1
            while i < len(lines) and lines[i].strip() and _indent(lines[i]) > len(pad):
                out.append(_links(pad + "  " + lines[i].strip()))
                i += 1
            continue
        out.append(_links(line))
        i += 1
    return "\n".join(out)


class ReSTToMarkdown(griffe.Extension):
    """Rewrites each docstring as it is loaded."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
