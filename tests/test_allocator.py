"""The allocator settings the command line applies at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

from magicbokeh import allocator


def test_a_malloc_environment_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.tune_allocator() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_the_settings_are_accepted_by_glibc() -> None:
    code = "from magicbokeh.allocator import tune_allocator; print(tune_allocator())"
    env = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* variables
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    libc = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.lower()
    if "glibc" not in libc and "gnu libc" not in libc:
        pytest.skip("not a glibc system")
    assert out.stdout.strip() == "True", out.stderr
