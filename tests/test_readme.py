"""README.md stays true: its Python API example runs and its command lines parse."""

import re
import shlex
from pathlib import Path

import pytest

from jaxseq import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_python_api_example_runs(capsys):
    (code,) = _blocks("python")
    exec(compile(code, "README.md (Python API)", "exec"), {})
    out = capsys.readouterr().out
    assert "'perplexity'" in out            # the trigram's evaluate() dict, then a sample and a perplexity


def _command_lines():
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("jaxseq "):
                # "[--data FILE]" marks an optional flag, "..." elided ones
                yield re.sub(r"\[[^\]]*\]|\.\.\.", "", line)


@pytest.mark.parametrize("line", list(_command_lines()))
def test_command_lines_parse(line):
    args = cli.build_parser().parse_args(shlex.split(line)[1:])
    assert args.command in ("train", "evaluate", "generate", "translate", "stats", "data")
