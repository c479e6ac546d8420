"""The commands and links in README.md, CONTRIBUTING.md and docs/*.md match the code.

From the shell code blocks (```sh, ```bash, ```console, ```shell, and unlabelled blocks whose
lines start with a command) and from inline code that starts with a command, every command
line that runs

* ``mrnn SUBCOMMAND`` (also ``.venv/bin/mrnn``, ``python -m mrnn_jax``): the subcommand
  exists and every ``--flag`` is one of its ``--help`` options;
* ``python experiments/SCRIPT.py`` or ``python data_prep/SCRIPT.py``: the script exists and
  every ``--flag`` is one of its ``--help`` options (any other ``python FILE.py``: the file
  exists);
* ``make TARGET``: the Makefile has the target, and every ``NAME=value`` given to make is a
  variable the Makefile uses.

Every relative link of README.md and docs/*.md (and CONTRIBUTING.md) names an existing file,
and an ``#anchor`` into a Markdown file names one of its headings. The ``mrnn`` help comes
from the parser the command builds (in this process); the scripts' help from one child
process that runs each of them with ``--help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import REPO, subprocess_env

DOCUMENTS = sorted(
    [
        "README.md",
        "CONTRIBUTING.md",
        *(
            f"docs/{name}"
            for name in os.listdir(os.path.join(REPO, "docs"))
            if name.endswith(".md")
        ),
    ]
)
SHELL_LANGUAGES = {"sh", "bash", "console", "shell", "shell-session", "zsh"}
HELP_CHECKED_DIRS = ("experiments/", "data_prep/")
SEPARATORS = {";", "&", "&&", "|", "||", "(", ")"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PYTHON = re.compile(r"^python(\d+(\.\d+)*)?$")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([^\s`]*)")
INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


@dataclasses.dataclass(frozen=True)
class Command:
    """One command found in a document: where, the program, and its arguments."""

    where: str  # "README.md:42"
    text: str
    program: str  # "mrnn", "python" (args[0] is the script) or "make"
    args: tuple[str, ...]


# --- Reading the documents ---------------------------------------------------------------


def _read(document: str) -> str:
    with open(os.path.join(REPO, document), encoding="utf-8") as f:
        return f.read()


def _split_fences(text: str) -> tuple[list[tuple[int, str, list[str]]], str]:
    """The fenced blocks as (first line number, language, lines), and the text with every
    fenced line blanked (so that line numbers still count)."""
    blocks, prose = [], []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        fence, language = match.group(1), match.group(2).lower()
        body, start = [], i + 2
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        blocks.append((start, language, body))
        prose.extend([""] * (len(body) + 2))
        i += 1
    return blocks, "\n".join(prose)


def _strip_comment(line: str) -> str:
    """``line`` without a shell comment (a ``#`` at a word's start, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def _logical_lines(start: int, lines: list[str], console: bool) -> list[tuple[int, str]]:
    """(line number, command) for each command of a block, continuation lines joined."""
    if console and any(line.lstrip().startswith("$ ") for line in lines):
        lines = [line.lstrip()[2:] if line.lstrip().startswith("$ ") else "" for line in lines]
    joined, current, first = [], "", None
    for number, line in enumerate(lines, start):
        if first is None:
            first = number
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        joined.append((first, current + line))
        current, first = "", None
    if current:
        joined.append((first, current))
    return [(number, text) for number, text in joined if text.strip()]


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(_strip_comment(text), posix=True, punctuation_chars=True)
    lexer.commenters = ""
    return list(lexer)


def _is_program(token: str) -> bool:
    name = os.path.basename(token)
    return name in ("mrnn", "make") or bool(PYTHON.match(name))


def _segments(tokens: list[str]) -> list[list[str]]:
    """The simple commands of a command line (split at ; & && | || and parentheses); a
    quoted argument holding a command line (``--command="..."``) adds its own."""
    segments, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            segments.append(current)
            current = []
            continue
        current.append(token)
        if " " in token:
            inner = token.split("=", 1)[1] if token.startswith("-") and "=" in token else token
            segments.extend(_segments(_tokens(inner)))
    segments.append(current)
    return [s for s in segments if s]


def _command(where: str, text: str, words: list[str], anywhere: bool) -> Command | None:
    """The checked command in one simple command's words, if any: at its start (after
    ``NAME=value`` settings), or, in a shell block, anywhere (``srun ... mrnn train``)."""
    for i, word in enumerate(words):  # noqa: B007 (i: where the program is)
        if _is_program(word):
            break
        if not (anywhere or ENV_ASSIGNMENT.match(word)):
            return None
    else:
        return None
    program, args = os.path.basename(words[i]), words[i + 1 :]
    if program == "mrnn" or program == "make":
        return Command(where, text, program, tuple(args))
    # python: -m MODULE, or a script (options before it are the interpreter's)
    while args and args[0].startswith("-") and args[0] != "-m":
        args = args[1:]
    if len(args) >= 2 and args[0] == "-m":
        if args[1] == "mrnn_jax":
            return Command(where, text, "mrnn", tuple(args[2:]))
        return None
    if args and args[0].endswith(".py"):
        return Command(where, text, "python", tuple(args))
    return None


def _commands_in(where: str, text: str, anywhere: bool) -> list[Command]:
    commands = []
    for words in _segments(_tokens(text)):
        command = _command(where, text, words, anywhere)
        if command is not None:
            commands.append(command)
    return commands


def document_commands(document: str) -> list[Command]:
    """Every checked command of ``document``: shell blocks, command-like unlabelled blocks,
    and inline code that starts with a command."""
    blocks, prose = _split_fences(_read(document))
    commands = []
    for start, language, lines in blocks:
        if language not in SHELL_LANGUAGES and language != "":
            continue
        for number, text in _logical_lines(start, lines, console=language == "console"):
            where = f"{document}:{number}"
            if language == "":  # unlabelled: only lines that start with a command
                first = text.split()[0]
                if not _is_program(first) and not ENV_ASSIGNMENT.match(first):
                    continue
            commands.extend(_commands_in(where, text, anywhere=language != ""))
    for match in INLINE_CODE.finditer(prose):
        text = match.group(1).replace("\n", " ").strip()
        if not text or not _is_program(text.split()[0]):
            continue
        number = prose.count("\n", 0, match.start()) + 1
        commands.extend(_commands_in(f"{document}:{number}", text, anywhere=False))
    return commands


# --- What the code offers ----------------------------------------------------------------


def _options(help_text: str) -> set[str]:
    """The option strings an argparse help lists (``  -h, --help``, ``  --out OUT``)."""
    options = set()
    for line in help_text.splitlines():
        if not re.match(r"^ {2}-", line):
            continue
        invocation = re.split(r"\s{2,}", line.strip())[0]
        for part in invocation.split(", "):
            options.add(part.split()[0])
    return options


@functools.cache
def mrnn_help() -> dict[str, str]:
    """``mrnn --help`` (key "") and each subcommand's ``--help``, from the CLI's own parser."""
    from mrnn_jax import cli

    parser = cli._parser()
    helps = {"": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                helps[name] = subparser.format_help()
    return helps


# Runs each script given on its command line with --help, in this one process, and prints
# {script: help text} as JSON (a script whose module fails to import gets "ERROR ...").
_HELP_RUNNER = """
import contextlib, io, json, os, runpy, sys
helps = {}
for script in sys.argv[1:]:
    out, argv, path = io.StringIO(), sys.argv, list(sys.path)
    sys.argv = [script, "--help"]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(script, run_name="__main__")
    except SystemExit:
        pass
    except BaseException as error:
        out.write(f"ERROR {error!r}")
    finally:
        sys.argv, sys.path[:] = argv, path
    helps[script] = out.getvalue()
print(json.dumps(helps))
"""


@functools.cache
def script_helps() -> dict[str, str]:
    """``--help`` of every experiments/ and data_prep/ script the documents run."""
    scripts = sorted(
        {
            command.args[0]
            for document in DOCUMENTS
            for command in document_commands(document)
            if command.program == "python"
            and command.args[0].startswith(HELP_CHECKED_DIRS)
            and os.path.isfile(os.path.join(REPO, command.args[0]))
        }
    )
    if not scripts:
        return {}
    result = subprocess.run(
        [sys.executable, "-c", _HELP_RUNNER, *scripts],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@functools.cache
def makefile() -> tuple[set[str], set[str]]:
    """The Makefile's targets, and the variables it reads (``$(NAME)``)."""
    text = _read("Makefile")
    targets = set()
    for match in re.finditer(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?![=])", text, re.M):
        targets.update(match.group(1).split())
    return targets, set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", text))


# --- Checking -----------------------------------------------------------------------------


def _flags(args: tuple[str, ...]) -> list[str]:
    """The ``--flags`` among a command's words (``[--x``, ``--x=1`` and ``--x]`` too)."""
    flags = []
    for arg in args:
        arg = arg.strip("[]()")
        if arg.startswith("--") and len(arg) > 2:
            flags.append(arg.split("=", 1)[0])
    return flags


def problems(command: Command) -> list[str]:
    """What is wrong with ``command``, one line each (nothing: it matches the code)."""
    where = f"{command.where}: {command.text.strip()}\n    "
    if command.program == "mrnn":
        helps = mrnn_help()
        name = "" if not command.args or command.args[0].startswith("-") else command.args[0]
        if name.isupper():  # a placeholder (mrnn COMMAND --help): options of every subcommand
            options = set.intersection(*(_options(helps[n]) for n in helps if n))
            return [
                f"{where}{flag} is not an option of every subcommand"
                for flag in _flags(command.args[1:])
                if flag not in options
            ]
        if name and name not in helps:
            return [f"{where}mrnn has no subcommand {name!r} (it has {sorted(set(helps) - {''})})"]
        options = _options(helps[name])
        shown = f"mrnn {name} --help" if name else "mrnn --help"
        return [
            f"{where}{flag} is not an option of `{shown}`"
            for flag in _flags(command.args[1 if name else 0 :])
            if flag not in options
        ]
    if command.program == "python":
        script = command.args[0]
        if not os.path.isfile(os.path.join(REPO, script)):
            return [f"{where}{script} does not exist"]
        if not script.startswith(HELP_CHECKED_DIRS):
            return []
        help_text = script_helps()[script]
        if help_text.startswith("ERROR"):
            return [f"{where}`python {script} --help` failed: {help_text}"]
        options = _options(help_text)
        return [
            f"{where}{flag} is not an option of `python {script} --help`"
            for flag in _flags(command.args[1:])
            if flag not in options
        ]
    targets, variables = makefile()
    found = []
    for arg in command.args:
        if arg.startswith("-"):
            continue
        if ENV_ASSIGNMENT.match(arg):
            variable = arg.split("=", 1)[0]
            if variable not in variables:
                found.append(f"{where}the Makefile does not use the variable {variable}")
        elif arg not in targets:
            found.append(f"{where}the Makefile has no target {arg!r}")
    return found


@pytest.mark.parametrize("document", DOCUMENTS)
def test_commands_match_the_code(document):
    found = [line for command in document_commands(document) for line in problems(command)]
    assert not found, "\n".join(found)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(document: str) -> set[str]:
    _, prose = _split_fences(_read(document))
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
    return {slug if n == 0 else f"{slug}-{n}" for slug, total in seen.items() for n in range(total)}


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_exist(document):
    _, prose = _split_fences(_read(document))
    prose = INLINE_CODE.sub("", prose)
    targets = LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    found = []
    for target in targets:
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        if path:
            resolved = os.path.normpath(os.path.join(os.path.dirname(document), path))
        else:
            resolved = document
        if not os.path.exists(os.path.join(REPO, resolved)):
            found.append(f"{document}: link {target!r}: {resolved} does not exist")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            found.append(f"{document}: link {target!r}: {resolved} has no heading #{anchor}")
    assert not found, "\n".join(found)


def test_the_checks_see_the_readme_commands():
    """The extraction finds what the checks rely on: the README's commands, and its "Set up
    and test" block is exactly what CI runs (.ci/run)."""
    commands = document_commands("README.md")
    programs = {command.program for command in commands}
    assert {"mrnn", "make", "python"} <= programs, commands
    assert any(c.program == "mrnn" and c.args[:1] == ("serve",) for c in commands)
    text = _read("README.md")
    heading = text[: text.index("\n## Set up and test")].count("\n") + 2
    blocks, _ = _split_fences(text)
    first_block = next(lines for start, _, lines in blocks if start > heading)
    setup = [_tokens(line) for line in first_block if line.strip()]
    with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
        ci = [line.split() for line in f if line.startswith("make ")]
    assert setup == ci == [["make", "test"], ["make", "train"]]
