"""The README's commands are the ones CI runs, and the code is lint-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^```sh\n(.+?)\n```", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = readme_commands()[1]
    assert "pytest" in test_command
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.skipif(RUFF is None, reason="ruff is not installed (it comes with the [test] extra)")
def test_ruff_clean() -> None:
    ruff = str(RUFF)
    completed = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, check=False)
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python example, run as written on a real model."""
    from lmul_onnx import zoo

    text = (ROOT / "README.md").read_text()
    example = re.search(r"^```python\n(.+?)\n```", text, flags=re.MULTILINE | re.DOTALL)
    assert example is not None
    shutil.copyfile(zoo.path("paraphrase-minilm-l3"), tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example.group(1), "README.md", "exec"), namespace)
    assert (tmp_path / "model.lmul.onnx").is_file()
    assert namespace["report"].outputs and namespace["so"] is not None
    assert namespace["result"].passed
    assert (tmp_path / "model.tuned.onnx").read_bytes() == (tmp_path / "again.onnx").read_bytes()
