"""README.md stays true: its Python API example runs and its command lines parse."""

import re
import shlex
from pathlib import Path

import pytest

from jaxseq import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_python_api_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                         # its work directory lands under runs/
    (code,) = _blocks("python")
    scope = {}
    exec(compile(code, "README.md (Python API)", "exec"), scope)
    out = capsys.readouterr().out
    results, trained = scope["results"], scope["trained"]
    # what the example prints is what the run measured and saved
    assert f"{results['valid']['perplexity']:.3f}" in out
    assert 1.0 < results["valid"]["perplexity"] < len(trained.vocab)
    assert trained.step == results["step"] and (tmp_path / "runs" / "api-gru" / "results.json").exists()
    assert scope["log_p"] < 0


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
    assert args.command in ("train", "evaluate", "generate", "translate", "fill-mask", "classify", "stats", "data",
                            "inspect", "prepare", "average")
