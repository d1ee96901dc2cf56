"""The command registry: every listed command registers itself; listing imports nothing heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from magicbokeh import cli


def _subcommand_names(parser) -> set[str]:
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices)


def test_every_listed_module_registers_its_own_name():
    full = cli.build_parser(all_commands=True)
    assert _subcommand_names(full) == set(cli.COMMANDS)


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_selected_command_gets_its_full_parser(name):
    parser = cli.build_parser(name)
    action = next(a for a in parser._actions if a.dest == "command")
    sub = action.choices[name]
    assert any(a.option_strings == ["-h", "--help"] for a in sub._actions)


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys, contextlib, io\n"
        "from magicbokeh import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert all(name in out.getvalue() for name in cli.COMMANDS), out.getvalue()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_module_entry_point_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "magicbokeh", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.startswith("magicbokeh ")
