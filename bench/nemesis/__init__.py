"""`python -m bench nemesis`: the nemesis. A 3-node cluster in network namespaces made on this
machine, a load of dummy operations, one fault class at a time (partitions, pauses, kills, delay,
loss; bench/nemesis/disk.py adds the disk side when present), a Jepsen-style checker, and a table of
the shared result rows (fault, sync_interval, operations, acked, lost, duplicated, recover_s, notes).

`FAULTS` maps each fault class to an async callable returning its rows (the plug-in point).
KTRDR_NEMESIS_QUICK=1 (or `--quick`) runs a few classes; KTRDR_NEMESIS_FAULTS=a,b names them.
"""

from __future__ import annotations

import importlib.util
import os

from bench.nemesis.faults import NET_FAULTS, QUICK, Fault

FAULTS: dict[str, Fault] = dict(NET_FAULTS)
if importlib.util.find_spec("bench.nemesis.disk") is not None:  # disknem's faults, once they land
    from bench.nemesis.disk import DISK_FAULTS  # type: ignore[import-not-found, unused-ignore]

    FAULTS.update(DISK_FAULTS)

COLUMNS = ("fault", "sync_interval", "operations", "acked", "lost", "duplicated", "recover_s", "notes")


def selected() -> list[str]:
    names = [n for n in os.environ.get("KTRDR_NEMESIS_FAULTS", "").replace(",", " ").split() if n]
    if names:
        unknown = [n for n in names if n not in FAULTS]
        if unknown:
            raise SystemExit(f"unknown fault class(es) {', '.join(unknown)}; expected any of {', '.join(FAULTS)}")
        return names
    if os.environ.get("KTRDR_NEMESIS_QUICK"):
        return [n for n in QUICK if n in FAULTS]
    return list(FAULTS)


def table(rows: list[dict[str, object]]) -> str:
    """The rows as a fixed-width text table (notes last, unclipped)."""
    head = COLUMNS[:-1]
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in head}
    lines = ["  ".join(c.ljust(widths[c]) for c in head) + "  notes"]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in head) + f"  {r.get('notes', '')}" for r in rows]
    return "\n".join(lines)


async def main() -> dict[str, dict[str, object]]:
    """Every selected fault class once; bench._common.report's shape: {"rows": {"<fault> [<setting>]": row}}."""
    from bench.nemesis.net import unavailable

    why = unavailable()
    if why:  # `python -m bench` runs every suite: this one says why it did not run, the rest go on
        print(f"nemesis: not run: {why}")
        return {"not_run": {"reason": why}}
    rows: list[dict[str, object]] = []
    for name in selected():
        try:
            rows.extend(await FAULTS[name]())
        except Exception as exc:  # one class failing to run is a row saying so, not the end of the table
            rows.append({"fault": name, "sync_interval": "-", "operations": 0, "acked": 0, "lost": 0, "duplicated": 0,
                         "recover_s": -1.0, "notes": f"did not run: {type(exc).__name__}: {str(exc)[:200]}"})
        print(table(rows[-1:]), flush=True)
    print(table(rows))
    return {"rows": {f"{r['fault']} [{r['sync_interval']}]": r for r in rows}}
