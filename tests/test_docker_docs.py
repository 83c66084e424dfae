"""The documented Docker flow and the docker smoke test cannot drift apart; its commands exist. No Docker needed.

``.ci/docker-smoke`` runs docker/README.md's hospital-flow block through ``.ci/docs_commands.py`` (only the
block's first line, the site's folders, replaced). These tests check that the block is there in that shape,
that the smoke runs it and has no copy of its own, and that every ``ravl-med`` command in it (and in the main
README's hospital flow) parses with the CLI as it is.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from ravl_med.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCKER_README = ROOT / "docker" / "README.md"
SMOKE = ROOT / ".ci" / "docker-smoke"


def _docs_commands():
    spec = importlib.util.spec_from_file_location("docs_commands", ROOT / ".ci" / "docs_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs = _docs_commands()


def _commands(lines: list[str]) -> list[list[str]]:
    """Shell commands of a block (continuation lines joined, comments dropped), as tokens."""
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#")).replace("\\\n", " ")
    return [shlex.split(command, comments=True) for command in text.splitlines() if command.strip()]


def _ravl_med_argv(tokens: list[str]) -> list[str] | None:
    """The argv of the ``ravl-med`` command in a command line (after ``docker run ... IMAGE``), or None."""
    if tokens[:2] == ["docker", "run"]:
        image = next(i for i, t in enumerate(tokens) if t == "ravl-med")  # the image, then the command
        return tokens[image + 2:] if tokens[image + 1:image + 2] == ["ravl-med"] else None
    return tokens[1:] if tokens[:1] == ["ravl-med"] else None


def test_the_smoke_runs_the_docker_readme_hospital_flow_as_written():
    block = docs.fenced_block(DOCKER_README.read_text(), "hospital-flow")
    assert docs.site_variables(block) == {"DATA": "/srv/xray/study42", "MODELS": "/srv/models/cxr-v3",
                                          "OUT": "/srv/ravl/out"}
    script = docs.site_script(block, {"DATA": "/tmp/d", "MODELS": "/tmp/m", "OUT": "/tmp/o"})
    assert script.splitlines()[1:] == block[1:]  # every line but the first, as written
    assert "/srv/" not in script
    smoke = SMOKE.read_text()
    assert re.search(r"python3 \.ci/docs_commands\.py docker/README\.md hospital-flow \\\n\s+DATA=.* MODELS=.* OUT=",
                     smoke)
    assert 'source "$WORK/hospital-flow.sh"' in smoke
    # The smoke has no copy of the flow's commands that could drift from the README's.
    code = "\n".join(line for line in smoke.splitlines() if not line.lstrip().startswith("#"))
    for step in ("manifest", "validate", "audit", "review"):
        assert f"ravl-med {step}" not in code, step
    steps = [argv[0] for argv in map(_ravl_med_argv, _commands(block)) if argv]
    assert steps == ["manifest", "validate", "audit", "review"]


@pytest.mark.parametrize("source", ["docker/README.md", "README.md"])
def test_the_documented_hospital_flow_commands_parse(source):
    """Each ravl-med command of the hospital flow (docker/README.md's block, the main README's section) is one the
    CLI accepts, flags and all: a renamed flag fails here, not at a site."""
    text = (ROOT / source).read_text()
    if source == "README.md":
        section = text[text.index("## Auditing a hospital's own model and data"):]
        block = section[section.index("```bash\n") + 8:section.index("\n```", section.index("```bash\n"))]
        lines = block.splitlines()
    else:
        lines = docs.fenced_block(text, "hospital-flow")
    argvs = [argv for argv in map(_ravl_med_argv, _commands(lines)) if argv]
    assert len(argvs) >= 4
    parser = build_parser()
    for argv in argvs:
        args = parser.parse_args(argv)
        assert args.command == argv[0], argv


def test_a_block_in_another_shape_is_refused():
    good = ["DATA=/srv/a OUT=/srv/b   # folders", 'docker run -v "$DATA":/data -v "$OUT":/out ravl-med']
    markdown = "\n".join(["<!-- docker-smoke: flow -->", "```bash", *good, "```"])
    assert docs.fenced_block(markdown, "flow") == good
    with pytest.raises(docs.BlockError, match="expected one line"):
        docs.fenced_block(markdown, "other")
    with pytest.raises(docs.BlockError, match="/srv/a .* is written out again"):
        docs.site_script(good + ["ls /srv/a"], {"DATA": "/x", "OUT": "/y"})
    with pytest.raises(docs.BlockError, match="give exactly"):
        docs.site_script(good, {"DATA": "/x"})
    with pytest.raises(docs.BlockError, match="first line must set"):
        docs.site_variables(good[1:])
    assert docs.site_script(good, {"DATA": "/my data", "OUT": "/y"}).startswith("DATA='/my data' OUT=/y\n")
