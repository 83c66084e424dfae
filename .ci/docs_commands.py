#!/usr/bin/env python3
"""A documented command block, as a script: what .ci/docker-smoke runs, so that it runs what the docs say.

A block is a fenced ```bash block right after a marker line ``<!-- docker-smoke: NAME ... -->`` in a
Markdown file. Its first line sets the site's folders (``DATA=/srv/... MODELS=... OUT=...``); the
script is the block with that one line replaced by the given values, every other line as written.
No other line may hold a host path, so the replaced line decides every folder the block touches.
Standard library only (CI runs it with the host's python3 before any venv exists);
``tests/test_docker_docs.py`` checks the block and its commands without Docker.

    python3 .ci/docs_commands.py docker/README.md hospital-flow DATA=/tmp/d MODELS=/tmp/m OUT=/tmp/o
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

MARKER = "<!-- docker-smoke: {name}"
#: The site line: NAME=value pairs (no spaces in a value), then an optional comment.
SITE_LINE = re.compile(r"^((?:[A-Z_]+=\S+ ?)+)\s*(#.*)?$")


class BlockError(ValueError):
    """The documented block is missing or not in the shape the smoke test needs."""


def fenced_block(markdown: str, name: str) -> list[str]:
    """The lines of the ```bash block after the marker of ``name`` (fences excluded)."""
    lines = markdown.splitlines()
    marker = MARKER.format(name=name)
    starts = [i for i, line in enumerate(lines) if line.startswith(marker)]
    if len(starts) != 1:
        raise BlockError(f"expected one line starting {marker!r}, found {len(starts)}")
    start = starts[0] + 1
    if start >= len(lines) or lines[start].strip() != "```bash":
        raise BlockError(f"the line after {marker!r} must open a ```bash block")
    try:
        end = lines.index("```", start + 1)
    except ValueError:
        raise BlockError(f"the ```bash block after {marker!r} is not closed") from None
    return lines[start + 1:end]


def site_variables(block: list[str]) -> dict[str, str]:
    """The folders the block's first line sets, name -> documented value."""
    match = SITE_LINE.match(block[0]) if block else None
    if match is None:
        raise BlockError(f"the block's first line must set the site's folders (NAME=value ...), got {block[:1]}")
    return dict(pair.split("=", 1) for pair in match.group(1).split())


def site_script(block: list[str], values: dict[str, str]) -> str:
    """The block as a bash script, its first line replaced by ``values`` (the same names, other folders)."""
    documented = site_variables(block)
    if set(values) != set(documented):
        raise BlockError(f"give exactly {sorted(documented)}, got {sorted(values)}")
    for line in block[1:]:
        for value in documented.values():
            if value in line:
                raise BlockError(f"{value} (set in the first line) is written out again: {line.strip()!r}")
    first = " ".join(f"{name}={shlex.quote(values[name])}" for name in documented)
    return "\n".join([first, *block[1:]]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    path, name, pairs = Path(argv[0]), argv[1], argv[2:]
    try:
        block = fenced_block(path.read_text(encoding="utf-8"), name)
        script = site_script(block, dict(pair.split("=", 1) for pair in pairs))
    except (OSError, ValueError) as err:
        print(f"docs_commands: {path}: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(script)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
