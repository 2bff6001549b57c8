"""The `ktrdr` command line. Commands publish to NATS and render progress; nothing here does the
work. Heavy modules (torch, pandas, rich, nats) are imported inside the commands that need them;
`ktrdr --help` prints the typer app's own top-level help kept as text (ktrdr.cli._help), and `ktrdr
ops list` runs without typer when its options are well formed (ktrdr.cli._lean); anything else goes to
the typer app, which prints the help and the usage errors.
Every error a user can cause is one line on stderr and exit code 2, never a traceback.

`build_app` assembles the app: each commands module has a `register` function that adds its
commands to the app or to the groups it is handed, and none of them imports this package's names.
"""

from __future__ import annotations

import sys
from functools import cache

TYPE_CHECKING = False  # typing's own, without importing typing for `ktrdr --help` (type checkers read it as True)
if TYPE_CHECKING:  # typer (and the pydantic it imports) is imported when the lean path declines
    import typer


@cache
def build_app() -> typer.Typer:
    """The `ktrdr` app with every command and group registered (built once per process)."""
    import typer

    from ktrdr.cli import (
        auth_commands,
        backtest_commands,
        domain_commands,
        ops_commands,
        schedule_commands,
        stack_commands,
        sweep_commands,
        view_commands,
    )

    def group(help_text: str) -> typer.Typer:
        return typer.Typer(no_args_is_help=True, rich_markup_mode=None, help=help_text)

    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None,
                      help="KTRDR on NATS: load IB bars and train strategies as event-sourced operations.")
    ops = group("Operations: list, show, watch, replay, cancel, tail, plot.")
    events = group("The wire vocabulary.")
    data = group("Market data: load from IB, show, range, import, export, plot.")
    strategies = group("Strategy files.")
    models = group("Trained models.")
    schedule = group("Schedules nats-server fires: add, list, show, pause, resume, trigger, remove.")
    # The order of registration is the order `ktrdr --help` lists them in.
    stack_commands.register(app, events=events)
    domain_commands.register(app, data=data, strategies=strategies, models=models)
    backtest_commands.register(app)
    sweep_commands.register(app)
    ops_commands.register(ops)
    view_commands.register(app, ops=ops, data=data)
    schedule_commands.register(schedule)
    for name, sub in (("ops", ops), ("events", events), ("data", data), ("strategies", strategies),
                      ("models", models), ("schedule", schedule), ("auth", auth_commands.auth_app)):
        app.add_typer(sub, name=name)
    return app


def write_help_text() -> None:
    """Render the app's top-level help again into ktrdr/cli/_helptext.py, which `ktrdr --help` prints
    without importing typer (`python -c "import ktrdr.cli; ktrdr.cli.write_help_text()"`)."""
    from ktrdr.cli import _help

    print(f"wrote {_help.write(build_app())}")


def entry() -> None:
    """The `ktrdr` command itself (console script and `python -m ktrdr`)."""
    # nats-py's imports the CLI never needs (aiohttp; importlib.metadata for its version string):
    # skipped in the command's own process only (ktrdr.cli._startup)
    from ktrdr.cli import _startup

    _startup.install()
    main()


def main() -> None:
    from ktrdr.cli._help import lean_help

    text = lean_help(sys.argv[1:])
    if text is not None:  # typer's own top-level help, kept (ktrdr.cli._help)
        sys.stdout.write(text)
        sys.stdout.flush()
        sys.exit(0)
    from ktrdr.cli._lean import try_lean

    try:
        code = try_lean(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit(130)
    if code is not None:
        sys.exit(code)
    import typer

    try:
        rv = build_app()(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        # Typer's usage errors (it vendors click in recent versions, uses click in older ones) are
        # recognised by their shape, not their module: one line and exit 2, never a traceback.
        name = type(exc).__name__
        if name == "Abort":
            typer.echo("aborted", err=True)
            sys.exit(130)
        if name == "NoArgsIsHelpError":
            exc.show()  # type: ignore[attr-defined]  # `ktrdr` or `ktrdr ops` alone: the help
            sys.exit(0)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            typer.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(2)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
