"""The lean path of the hottest verb: `ktrdr ops list` with well-formed options runs without typer,
whose import (pydantic and its adapters) is most of the verb's start-up (`python -X importtime`).
It takes only what it fully understands: any argument it does not know, `--help`, a missing value
or a value of the wrong type, and it returns None, and the typer app parses the same argv and says
what it always says. Its options mirror the typer command's (tests/cli/test_lean.py checks both
lists and their types are the same), and both paths run ktrdr.cli._listing.run_list.
"""

from __future__ import annotations

# `ktrdr ops list`'s options: the flag, run_list's keyword, and the value's type (None: a flag).
LIST_OPTIONS: dict[str, tuple[str, type | None]] = {
    "--limit": ("limit", int), "--flat": ("flat", None), "--status": ("status", str),
    "--type": ("op_type", str), "--pool": ("pool", str), "--since": ("since", str), "--until": ("until", str),
    "--symbol": ("symbol", str), "--parent": ("parent", str), "--text": ("text", str), "--before": ("before", str),
    "--json": ("json_out", None),
}


def parse_list(args: list[str]) -> dict[str, object] | None:
    """run_list's keywords for `ops list ARGS`, or None when typer should parse them instead."""
    out: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        spec = LIST_OPTIONS.get(name)
        if spec is None:
            return None  # --help, an unknown option, a stray argument: typer's own words
        key, kind = spec
        if kind is None:
            if eq:
                return None
            out[key] = True
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                return None
            value = args[i + 1]
            i += 1
        i += 1
        if kind is int:
            try:
                out[key] = int(value)
            except ValueError:
                return None
        else:
            out[key] = value
    return out


def try_lean(argv: list[str]) -> int | None:
    """The exit code of the command `argv` (without the program's name) when the lean path ran it,
    else None."""
    if argv[:2] != ["ops", "list"]:
        return None
    kwargs = parse_list(argv[2:])
    if kwargs is None:
        return None
    import gc

    from ktrdr.cli._listing import run_list

    code = run_list(**kwargs)  # type: ignore[arg-type]
    # The interpreter's last cycle collection at exit walks every object the imports made (about
    # 23,000; ~1x a bare interpreter's whole start on this machine, `python -m bench.backbone cold`)
    # to find nothing: what the list opened is closed (the client's `async with`, asyncio.run's
    # loop) and its lines are flushed. Frozen objects are left to the exit's ordinary teardown.
    gc.freeze()
    return code
