"""Project hygiene: CI runs the README's test command; the code is ruff clean."""

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
    return re.findall(r"```bash\n\s*(python3 -m venv .*?)\n\s*```", text)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith("magicbokeh demo -o demo_out") and "torch==2.13.0" in demo
    assert "pytest" in tests and "torch==2.13.0" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_ruff_clean() -> None:
    beside_python = Path(sys.executable).parent / "ruff"
    ruff = beside_python if beside_python.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [str(ruff), *command, "src", "tests", "benchmarks"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
