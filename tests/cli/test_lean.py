"""`ktrdr ops list` on the lean path (ktrdr.cli._lean): the same options, rows and error lines as the
typer command, without importing typer or pydantic; whatever it does not fully understand reaches
the typer app, which prints its own help and usage errors."""

from __future__ import annotations

import asyncio
import json
import re
import sys

import pytest

from ktrdr.cli._lean import LIST_OPTIONS, parse_list
from tests.cli.test_cli import cli_env, ktrdr
from tests.helpers import wait_terminal


def test_the_lean_options_are_the_typer_commands_options():
    import typer.main

    from ktrdr.cli import build_app

    group = typer.main.get_command(build_app())
    command = group.commands["ops"].commands["list"]  # type: ignore[attr-defined]
    typer_side = {}
    for p in command.params:
        (flag,) = [o for o in p.opts if o.startswith("--")]
        kind = p.type_descriptor.annotation  # type: ignore[attr-defined]  # bool, int or str | None
        typer_side[flag] = (p.name, None if kind is bool else int if kind is int else str)
    assert LIST_OPTIONS == typer_side


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--limit"], ["--limit", "abc"], ["--limit=x"], ["--bogus"],
                                  ["stray"], ["--json=yes"], ["--status", "--json"]])
def test_what_the_lean_parser_does_not_understand_goes_to_typer(args):
    assert parse_list(args) is None


def test_the_lean_parser_reads_values_as_typer_does():
    assert parse_list(["--limit", "-3", "--status=failed", "--flat", "--json", "--type", "data", "--limit", "7"]) == \
        {"limit": 7, "status": "failed", "flat": True, "json_out": True, "op_type": "data"}


TYPER_LIST = ("import sys\nfrom ktrdr.cli import build_app\n"
              "try:\n    build_app()(['ops', 'list', *sys.argv[1:]], standalone_mode=False)\n"
              "except SystemExit:\n    pass\n")
LEAN_LIST = ("import sys\nfrom ktrdr.cli import main\nsys.argv = ['ktrdr', 'ops', 'list', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "loaded = sorted(m for m in ('typer', 'pydantic', 'click') if m in sys.modules)\n"
             "print('LOADED', loaded, file=sys.stderr)\n")


def _ageless(text: str) -> str:
    """The table without its AGE column, which moves on between two runs."""
    return re.sub(r"% +\d+[smhd]  ", "% AGE  ", text)


async def _python(settings, code: str, *argv: str) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, *argv, env=cli_env(settings),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode(), err.decode()


async def test_ops_list_lean_prints_what_the_typer_command_prints_without_importing_typer(start_actors, settings,
                                                                                          client):
    await start_actors("orchestrator", "dummy")
    made = []
    for _ in range(2):
        rc, out, err = await ktrdr(settings, "dummy", "--iterations", "1", "--interval", "0.01", "--no-wait")
        assert rc == 0, err
        made.append(out.strip())
    for op_id in made:
        await wait_terminal(client, op_id)
    for argv in (["--json", "--limit", "1"], ["--json", "--status=completed"], ["--limit", "5", "--flat"]):
        lean_out, lean_err = await _python(settings, LEAN_LIST, *argv)
        typer_out, typer_err = await _python(settings, TYPER_LIST, *argv)
        assert "LOADED []" in lean_err, lean_err
        assert _ageless(lean_out) == _ageless(typer_out) and lean_err.replace("LOADED []\n", "") == typer_err
    listed, _ = await _python(settings, LEAN_LIST, "--json")
    assert [v["op_id"] for v in json.loads(listed)] == made


async def test_ops_list_help_and_usage_errors_are_typers(settings):
    rc, out, _ = await ktrdr(settings, "ops", "list", "--help")
    assert rc == 0 and "--before" in out and "Usage:" in out
    rc, _out, err = await ktrdr(settings, "ops", "list", "--limit", "abc")
    assert rc == 2 and err.startswith("error: Invalid value for '--limit'") and len(err.splitlines()) == 1
    rc, _out, err = await ktrdr(settings, "ops", "list", "--colour")
    assert rc == 2 and "--colour" in err and len(err.splitlines()) == 1
    rc, _out, err = await ktrdr(settings, "ops", "list", "--limit", "5000")  # the lean path's own check
    assert rc == 2 and err == "error: --limit must be 0 to 1000, got 5000\n"
