"""The README as written: every ```python block runs in a fresh process (from an empty folder), except blocks marked
`<!-- not run: reason -->` on the line before them (they need a trained `outputs/` folder or the network; the test
lists them); every script named in a ```bash block exists, and every flag given to it is one its `--help` lists."""

import contextlib
import io
import os
import re
import runpy
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->\s*$")
ENTRY_POINTS = {"florence-pretrain": "modeling_florence.pretraining_florence"}


def blocks(language: str) -> list[tuple[int, str, str | None]]:
    """(line number, code, reason it is not run or None) of every ```language block."""
    found, lines = [], README.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() == f"```{language}":
            start, body = index + 1, []
            index += 1
            while lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            marker = NOT_RUN.match(lines[start - 2].strip()) if start >= 2 else None
            found.append((start, "\n".join(body) + "\n", marker.group(1) if marker else None))
        index += 1
    return found


PYTHON_BLOCKS = blocks("python")
RUN = [(line, code) for line, code, reason in PYTHON_BLOCKS if reason is None]


def test_the_skipped_snippets_are_few_and_say_why():
    skipped = [(line, reason) for line, _, reason in PYTHON_BLOCKS if reason is not None]
    print("README snippets not run:", *(f"line {line}: {reason}" for line, reason in skipped), sep="\n  ")
    assert len(RUN) >= 5 and all(("make demo" in reason or "network" in reason) for _, reason in skipped), skipped


@pytest.mark.parametrize("line, code", RUN, ids=[f"line-{line}" for line, _ in RUN])
def test_python_snippet_runs_as_written(line, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"README line {line} failed:\n{code}\n{result.stderr[-4000:]}"


def commands() -> list[tuple[int, str]]:
    """Every command line of the ```bash blocks, continuation lines joined."""
    found = []
    for line, code, _ in blocks("bash"):
        for command in code.replace("\\\n", " ").splitlines():
            command = command.split("#")[0].strip()
            if command:
                found.append((line, command))
    return found


def script_and_flags(command: str) -> tuple[str, list[str]] | None:
    """The script (a path, `-m module` or entry point) a command runs and the flags given to it; None for make/pip."""
    words = command.split()
    for index, word in enumerate(words):
        if word.endswith(".py"):
            target, rest = word, words[index + 1 :]
            break
        if word == "-m" and index + 1 < len(words):
            target, rest = f"-m {words[index + 1]}", words[index + 2 :]
            break
        if word in ENTRY_POINTS:
            target, rest = f"-m {ENTRY_POINTS[word]}", words[index + 1 :]
            break
    else:
        return None
    return target, [word.split("=")[0] for word in rest if word.startswith("--")]


def help_text(target: str) -> str:
    """`--help` of a script or module, run in this process (runpy, as `python script --help` would)."""
    output, argv = io.StringIO(), sys.argv
    sys.argv = [target, "--help"]
    try:
        with contextlib.redirect_stdout(output), pytest.raises(SystemExit) as exit_info, warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # runpy's: this process imported the package already
            if target.startswith("-m "):
                runpy.run_module(target[3:], run_name="__main__", alter_sys=False)
            else:
                runpy.run_path(str(REPO / target), run_name="__main__")
    finally:
        sys.argv = argv
    assert exit_info.value.code in (0, None), f"{target} --help exited with {exit_info.value.code}"
    return output.getvalue()


def test_every_script_and_flag_in_the_shell_commands_exists():
    wanted: dict[str, set[str]] = {}
    for line, command in commands():
        parsed = script_and_flags(command)
        if parsed is None:
            assert command.split()[0] in ("make", "pip", "FLORENCE_MODEL=path/or/repo"), (line, command)
            continue
        target, flags = parsed
        if not target.startswith("-m "):
            assert (REPO / target).is_file(), f"README line {line}: {target} does not exist"
        wanted.setdefault(target, set()).update(flags)
    assert len(wanted) >= 10
    problems = []
    for target, flags in sorted(wanted.items()):
        if not flags:
            continue
        text = help_text(target)
        problems += [f"{target}: {flag}" for flag in sorted(flags) if not re.search(rf"{re.escape(flag)}\b", text)]
    assert not problems, f"flags the README gives that the scripts do not accept: {problems}"


def test_the_coco_command_is_a_first_run_from_pretrained_towers():
    coco = [command for _, command in commands() if "--coco-train " in command]
    assert coco and all("--base" in command and "--resume_from_checkpoint" not in command for command in coco)
