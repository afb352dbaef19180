"""The docs must be true: docs/cli.md names every command and flag of every parser, every flag README.md and
docs/*.md mention exists, a command written in the docs uses only its own flags, and ``bernini tasks`` shows
both models' guidance modes. The parsers are the real ones, built as the front ends build them."""

from __future__ import annotations

import argparse
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted(REPO.glob("docs/*.md"))
CLI_MD = REPO / "docs" / "cli.md"
# Flags of other programs the docs show (torchrun's launcher flags, given before the script).
TORCHRUN = {"--nproc-per-node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--standalone"}
# Abbreviations the docs name as rejected; each must stay a prefix of a real flag and never become one.
REJECTED_EXAMPLES = {"--out"}
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_-]*[A-Za-z0-9]")
COMMAND = re.compile(
    r"\bbernini(?:\.cli)?\s+(?P<sub>[a-z][a-z-]*)"
    r"|(?P<script>infer_single_gpu\.py|infer_multi_gpu\.py|gradio_demo\.py)"
    r"|(?P<check>bernini\.parallel\.check)"
    r"|bench/(?P<bench>\w+)\.py"
)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@pytest.fixture(scope="module")
def commands() -> dict[str, set[str]]:
    """Each command's option strings: ``bernini`` itself, every subcommand, and the check."""
    from bernini.frontends.cli import build_parser
    from bernini.frontends.demo.app import build_parser as demo_parser
    from bernini.frontends.parallel_check import build_parsers as check_parsers
    from bernini.frontends.serve.client import build_parser as submit_parser
    from bernini.frontends.serve.server import build_parser as serve_parser

    top = build_parser()
    out = {"bernini": _options(top)}
    for name, parser in _subparsers(top).items():
        out[name] = _options(parser) | out["bernini"]  # -v / --version also before the command
    # demo, serve and submit are stubs in the top parser (they parse their own flags): the real parsers
    out["demo"] = _options(demo_parser())
    out["serve"] = _options(serve_parser())
    out["submit"] = _options(submit_parser())
    own, generate = check_parsers()
    out["check"] = _options(own) | _options(generate)
    return out


def _bench_flags() -> dict[str, set[str]]:
    """``bench/NAME.py``'s flags, read from its ``add_argument`` calls (its parsers are built inside ``main``)."""
    flags: dict[str, set[str]] = {}
    for path in (REPO / "bench").glob("*.py"):
        found = flags.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                found |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
        found |= {"-h", "--help"}
    return flags


def _mentioned(text: str) -> set[str]:
    return set(FLAG.findall(text))


def test_cli_md_names_every_command_and_flag(commands):
    from bernini.sampling.guidance import MODE_NAMES
    from bernini.tasks import TASKS

    doc = CLI_MD.read_text(encoding="utf-8")
    named = _mentioned(doc) | set(re.findall(r"(?<![\w-])-[a-z](?![\w-])", doc))
    for command, options in commands.items():
        heading = {"bernini": "bernini", "check": "python -m bernini.frontends.parallel_check"}.get(
            command, f"bernini {command}"
        )
        assert f"`{heading}" in doc, f"docs/cli.md never shows the command {heading}"
        missing = sorted(options - named)
        assert not missing, f"docs/cli.md does not document {heading}'s {', '.join(missing)}"
    for name in (*TASKS, *MODE_NAMES):
        assert f"`{name}" in doc or f" {name} " in doc, f"docs/cli.md never names {name}"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from bernini.frontends.cli import build_parser
    from bernini.frontends.demo.app import build_parser as demo_parser
    from bernini.frontends.parallel_check import build_parsers as check_parsers
    from bernini.frontends.serve.client import build_parser as submit_parser
    from bernini.frontends.serve.server import build_parser as serve_parser

    parsers = _subparsers(build_parser())
    parsers.update(demo=demo_parser(), serve=serve_parser(), submit=submit_parser())
    own, generate = check_parsers()
    generate._add_container_actions(own)
    parsers["check"] = generate
    return parsers


NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w])")


def test_cli_md_numeric_defaults_match_the_parsers():
    """A default written as a number in docs/cli.md's tables is the parser's (rows whose flag cell shows a value,
    such as ``--height 0 --width 0``, and defaults written in words are not compared)."""
    from bernini.request import GenerationRequest

    parsers = _parsers()
    builtin = GenerationRequest.builtin()
    doc = CLI_MD.read_text(encoding="utf-8")
    compared = 0
    for section in re.split(r"^# ", doc, flags=re.M)[1:]:
        title = section.splitlines()[0]
        found = re.search(r"`(?:bernini (?P<sub>[a-z-]+)|python -m bernini\.parallel\.(?P<check>check))`", title)
        if not found:
            continue
        parser = parsers[found["sub"] or found["check"]]
        actions = {option: action for action in parser._actions for option in action.option_strings}
        for row in re.findall(r"^\|(.+)$", section, flags=re.M):
            cells = [cell.strip() for cell in row.split("|")]
            if len(cells) < 2 or re.search(r"\d", cells[0]) or not NUMBER.search(cells[1]):
                continue
            written = {float(n) for n in NUMBER.findall(cells[1])}
            for flag in _mentioned(cells[0]):
                default = actions[flag].default
                if default is None:  # a request setting's flag: not given; the declared built-in default fills it
                    default = builtin.get(actions[flag].dest)
                values = default if isinstance(default, list) else [default]
                for value in values:
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        compared += 1
                        assert float(value) in written, f"docs/cli.md ({title}): {flag} defaults to {value}: {row}"
    assert compared > 30


def test_every_flag_the_docs_mention_exists(commands):
    known = set().union(*commands.values(), *_bench_flags().values(), TORCHRUN)
    assert not REJECTED_EXAMPLES & known
    assert all(any(flag.startswith(example) for flag in known) for example in REJECTED_EXAMPLES)
    for path in [REPO / "README.md", *DOCS]:
        if path.name == "reliability.md":  # lists the rejected abbreviations it tests (`--num_inf`, ...)
            continue
        unknown = sorted(_mentioned(path.read_text(encoding="utf-8")) - known - REJECTED_EXAMPLES)
        assert not unknown, f"{path.name} mentions flags no parser has: {', '.join(unknown)}"


def _shown_commands(text: str):
    """Every command line of the docs' shell blocks and inline code: (the command it runs, its flags)."""
    blocks = re.findall(r"```(?:bash|console|sh)?\n(.*?)```", text, re.S)
    inline = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    for chunk in [*blocks, *inline]:
        chunk = re.sub(r"\\\n", " ", chunk)
        for line in chunk.splitlines():
            line = re.sub(r"(^|\s)#.*", "", line)  # comments
            for segment in re.split(r"&&|\|\||;|\|", line):
                match = COMMAND.search(segment)
                if match:
                    yield match, sorted(_mentioned(segment[match.end() :]))


def test_commands_in_the_docs_use_their_own_flags(commands):
    bench = _bench_flags()
    seen = 0
    for path in [REPO / "README.md", *DOCS]:
        for match, flags in _shown_commands(path.read_text(encoding="utf-8")):
            if match["bench"]:
                command, allowed = f"bench/{match['bench']}.py", bench[match["bench"]]
            elif match["check"]:
                command, allowed = "python -m bernini.frontends.parallel_check", commands["check"]
            elif match["script"]:
                command = match["script"]
                allowed = commands["demo"] if command == "gradio_demo.py" else commands["generate"]
            elif match["sub"] in commands:
                command, allowed = f"bernini {match['sub']}", commands[match["sub"]]
            else:
                continue  # prose such as "bernini is ...": no command
            seen += 1
            wrong = [flag for flag in flags if flag not in allowed]
            assert not wrong, f"{path.name}: `{command}` has no {', '.join(wrong)}: {match.string.strip()}"
    assert seen > 50  # the scan does find the docs' commands


def test_tasks_shows_both_models_guidance_modes():
    """``bernini tasks`` (the real command) lists, per task, Bernini-R's default mode and the full model's
    shipped one, and every mode of both models."""
    from bernini.sampling.full_presets import FULL_PRESETS
    from bernini.sampling.guidance import FULL_MODEL_MODES, GUIDANCE_MODES
    from bernini.tasks import TASKS

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "bernini", "tasks"], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0 and proc.stderr == ""
    lines = proc.stdout.splitlines()
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] in TASKS}
    assert set(rows) == set(TASKS)
    for name, spec in TASKS.items():
        shipped = {FULL_PRESETS[version][name].guidance_mode for version in FULL_PRESETS}
        assert rows[name][1] == spec.guidance_mode, rows[name]
        assert shipped <= set(rows[name][2:4]), (name, shipped, rows[name])
    renderer = next(line for line in lines if line.startswith("guidance modes, Bernini-R"))
    full = next(line for line in lines if line.startswith("guidance modes, full model"))
    assert all(f" {mode} (" in renderer for mode in GUIDANCE_MODES)
    assert all(f" {mode} (up to {m.forwards_per_step} " in full for mode, m in FULL_MODEL_MODES.items())


TEST_REF = re.compile(r"`(tests/test_\w+\.py)?::(test_\w+)")


def test_every_test_the_docs_name_exists():
    """reliability.md and the other docs cite tests as ``tests/test_x.py::name`` (or ``::name`` for the file named last
    before it); each must be a test function in that file, so a renamed or deleted test cannot leave a claim behind."""
    defined: dict[str, set[str]] = {}
    for path in REPO.glob("tests/test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined[f"tests/{path.name}"] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    missing = []
    for doc in [*DOCS, REPO / "README.md"]:
        current = None
        for line in doc.read_text(encoding="utf-8").splitlines():
            for match in TEST_REF.finditer(line):
                current = match.group(1) or current
                if current is None or match.group(2) not in defined.get(current, set()):
                    missing.append(f"{doc.name}: {current}::{match.group(2)}")
    assert not missing, missing
