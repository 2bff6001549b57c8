"""What `ktrdr` skips at start-up (issue 23, item 5) without changing what it prints: the top-level
help kept as text (ktrdr.cli._help) is the typer app's own, under either program name and at any
width, and the process that skips importlib.metadata still sends nats-py's real version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ktrdr.cli import _help
from ktrdr.cli._helptext import TOP_HELP

ROOT = Path(__file__).resolve().parents[2]
# What pip writes as the `ktrdr` console script (its file name is the program's name in the help).
CONSOLE_SCRIPT = ("import re\nimport sys\nfrom ktrdr.cli import entry\nif __name__ == '__main__':\n"
                  "    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    sys.exit(entry())\n")
TYPER_HELP = ("import sys\nfrom ktrdr.cli import build_app\n"
              "build_app()(['--help'], prog_name=sys.argv[1], standalone_mode=False)\n")


def _env(columns: int | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return env


def _run(argv: list[str], columns: int | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-X", "importtime", *argv], env=_env(columns), capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def _typer_help(prog: str, columns: int | None) -> str:
    out = subprocess.run([sys.executable, "-c", TYPER_HELP, prog], env=_env(columns), capture_output=True,
                         text=True, timeout=120, cwd=ROOT, check=True)
    return out.stdout


def test_the_kept_help_is_what_the_typer_app_renders_now():
    from ktrdr.cli import build_app

    assert _help.render_typer_help(build_app()) == TOP_HELP, \
        'run `python -c "import ktrdr.cli; ktrdr.cli.write_help_text()"` and commit ktrdr/cli/_helptext.py'


def test_the_kept_help_is_typers_at_80_columns():
    """The rendering that makes the kept text (terminal_width) is the one typer gives an 80-column terminal."""
    assert TOP_HELP.replace(_help.PROG, "ktrdr") == _typer_help("ktrdr", 80)


def test_the_kept_help_lists_every_top_level_command():
    import typer.main

    from ktrdr.cli import build_app

    names = typer.main.get_command(build_app()).commands  # type: ignore[attr-defined]
    listed = [line.split()[0] for line in TOP_HELP.split("Commands:\n", 1)[1].splitlines() if line.strip()]
    assert sorted(listed) == sorted(names)


@pytest.mark.parametrize("how", ["python -m", "console script"])
@pytest.mark.parametrize("columns", [None, 80, 200])
def test_ktrdr_help_prints_typers_help_without_typer(how, columns, tmp_path):
    if how == "python -m":
        argv, prog = ["-m", "ktrdr", "--help"], "python -m ktrdr"
    else:
        script = tmp_path / "ktrdr"
        script.write_text(CONSOLE_SCRIPT)
        argv, prog = [str(script), "--help"], "ktrdr"
    out = _run(argv, columns)
    assert out.returncode == 0, out.stderr
    assert out.stdout == _typer_help(prog, columns)
    loaded = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")]
    assert not {"typer", "click", "pydantic"} & set(loaded)


def test_a_narrow_terminal_gets_typers_own_wrapping():
    out = _run(["-m", "ktrdr", "--help"], 60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == _typer_help("python -m ktrdr", 60)
    assert out.stdout != TOP_HELP.replace(_help.PROG, "python -m ktrdr")  # the kept text is for 80+ columns


@pytest.mark.parametrize("argv", [["ops", "--help"], ["--help", "x"], []])
def test_other_help_goes_to_typer(argv):
    assert _help.lean_help(argv) is None


def test_the_cli_process_skips_importlib_metadata_and_sends_the_real_version():
    code = ("import sys\nfrom ktrdr.cli import _startup\n_startup.install()\nimport nats.aio.client as c\n"
            "print('importlib.metadata' in sys.modules, c.__version__)\n"
            "import importlib.metadata\nprint(importlib.metadata.version('nats-py'), importlib.metadata.__file__)\n")
    out = subprocess.run([sys.executable, "-c", code], env=_env(None), capture_output=True, text=True, timeout=120,
                         cwd=ROOT, check=True)
    first, second = out.stdout.splitlines()
    skipped, sent = first.split()
    real, module_file = second.split()
    assert skipped == "False"
    assert sent == real  # the CONNECT line's version is the installed nats-py's
    assert module_file.endswith(os.path.join("importlib", "metadata", "__init__.py"))  # the real module after


def test_the_dist_info_version_is_none_unless_one_directory_says_it(tmp_path):
    assert _version_in(tmp_path) is None
    (tmp_path / "nats_py-2.16.0.dist-info").mkdir()
    assert _version_in(tmp_path) == "2.16.0"
    (tmp_path / "nats_py-2.17.0.dist-info").mkdir()
    assert _version_in(tmp_path) is None  # two installs: importlib.metadata decides


def _version_in(site_dir: Path) -> str | None:
    from ktrdr.cli._startup import dist_info_version

    return dist_info_version("nats-py", str(site_dir))
