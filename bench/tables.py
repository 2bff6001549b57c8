"""`python -m bench.tables RUN_DIR [RUN_DIR ...]`: the README tables (markdown) from the JSON results
of several runs (each RUN_DIR holds backbone.json, memory.json, scale.json, workflows.json as
`python -m bench` writes them to bench/results/), one column per run where a target exists."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _load(dirs: list[Path], suite: str) -> list[dict[str, Any]]:
    return [json.loads((d / f"{suite}.json").read_text()) for d in dirs if (d / f"{suite}.json").exists()]


def _row(label: str, values: list[str], baseline: str, target: str) -> str:
    return f"| {label} | {' · '.join(values)} | {baseline} | {target} |"


def backbone(runs: list[dict[str, Any]]) -> list[str]:
    out = ["| figure | runs 1 · 2 · 3 | baseline, same run | target |", "|---|---|---|---|"]
    for key, label in (("replay_100k", "100,000 events"), ("replay_1m", "1,000,000 events")):
        rs = [r[key] for r in runs if key in r]
        out.append(_row(f"replay of {label}, decode + fold (`ops replay`'s read), ratio to raw (median of rounds)",
                        [f"{x['ratio_decode_fold_vs_raw']:.2f} ({x['decode_fold_events_per_s'] / 1e3:.0f}k/s)"
                         for x in rs],
                        "raw ordered consumer, count only: " + " / ".join(
                            f"{x['raw_ordered_consumer_per_s'] / 1e3:.0f}k/s" for x in rs), "≥ 0.9x"))
        out.append(_row(f"the whole `ops replay` of {label} (lines to /dev/null), ratio to raw",
                        [f"{x['ratio_ops_replay_vs_raw']:.2f}" for x in rs], "same", "≥ 0.9x"))
        out.append(_row(f"lowest single-round ratio, {label}", [f"{x['min_round_ratio']:.2f}" for x in rs], "", ""))
    pl = [r["progress_latency"] for r in runs]
    out.append(_row("progress latency p99", [f"{x['p99_ms']:.2f} ms" for x in pl],
                    "raw: " + " / ".join(f"{x['raw_p99_ms']:.2f} ms" for x in pl), "≤ 2 ms"))
    cl = [r["cancel_latency_dummy"] for r in runs]
    out.append(_row("cancel latency p99 (dummy)", [f"{x['p99_ms']:.1f} ms" for x in cl], "—", "≤ 20 ms"))
    pt = [r["publish_throughput"] for r in runs]
    out.append(_row("publish throughput, ratio to raw publish_async", [f"{x['ratio_vs_raw']:.2f}" for x in pt],
                    " / ".join(f"{x['raw_publish_async_per_s'] / 1e3:.1f}k/s" for x in pt), "≥ 0.8"))
    return out


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def workflows(runs: list[dict[str, Any]]) -> list[str]:
    w = [r["parent_cancel_to_last_child"] for r in runs]
    return ["| figure | runs 1 · 2 · 3 | same run | target |", "|---|---|---|---|",
            _row("training workflow: parent cancel → last child's `cancelled` (median of 10)",
                 [f"{x['last_child_cancelled_median_ms']:.0f} ms (max {x['last_child_cancelled_max_ms']:.0f})"
                  for x in w], "parent's own: " + " / ".join(f"{x['parent_cancelled_median_ms']:.0f} ms" for x in w),
                 "≤ 1 s")]


def scale(runs: list[dict[str, Any]]) -> list[str]:
    out = ["| in flight | ops/s (runs 1 / 2 / 3) | events/s | op latency p50 | CPU ms per op, all processes |",
           "|---|---|---|---|---|"]
    for i, conc in enumerate((1, 10, 100, 1000)):
        rows = [r["scaling"]["rows"][i] for r in runs]
        assert all(x["concurrency"] == conc for x in rows)
        out.append(f"| {conc} | {' / '.join(str(x['ops_per_s']) for x in rows)} | "
                   f"{' / '.join(str(x['events_per_s']) for x in rows)} | "
                   f"{' / '.join(_ms(x['op_latency_median_s']) for x in rows)} | "
                   f"{' / '.join(str(x['cpu_ms_per_op']) for x in rows)} |")
    out.append(f"| target: CPU per op at 1,000 ≤ 1.2x at 10 | "
               f"{' / '.join(str(r['scaling']['cpu_per_op_1000_vs_10']) for r in runs)} | | | |")
    return out


def memory(runs: list[dict[str, Any]]) -> list[str]:
    m = runs[-1]
    a, t, rp, q = m["actors"], m["ten_years_1m"], m["replay_memory"], m["queued_1000"]
    out = ["| process | idle RSS | peak under load | load |", "|---|---|---|---|"]
    for role, peak in a["load_peak_mb"].items():
        idle = a["idle_rss_mb"].get(role.replace("_with_child", ""), "")
        out.append(f"| {role} | {idle} MiB | {peak} MiB | |")
    out.append(f"| baselines | bare interpreter {a['baseline']['bare_interpreter_peak_mb']} MiB, a process that only "
               f"connects {a['baseline']['connect_only_peak_mb']} MiB | | |")
    out += ["", "| figure | runs 1 · 2 · 3 | baseline, same run | target |", "|---|---|---|---|"]
    rps = [r["replay_memory"] for r in runs]
    out.append(_row("`ops replay` peak RSS, 100k / 1M events",
                    [f"{x['replay_100k_peak_mb']} / {x['replay_1m_peak_mb']} MiB" for x in rps],
                    "connect only: " + " / ".join(f"{x['baseline_connect_only_peak_mb']} MiB" for x in rps),
                    "no growth"))
    out.append(_row("the old read-all-then-fold path, 100k / 1M",
                    [f"{x['old_list_path_100k_peak_mb']} / {x['old_list_path_1m_peak_mb']} MiB" for x in rps], "", ""))
    out.append(_row("`ops replay --json` 1M; `--speed 1e6` 100k / 1M",
                    [f"{x['replay_1m_json_peak_mb']}; {x['replay_100k_paced_peak_mb']} / "
                     f"{x.get('replay_1m_paced_peak_mb', '-')} MiB" for x in rps], "", "bounded"))
    peaks = f"{t['store_read_peak_mb']} / {t['store_write_peak_mb']} / {t['store_merge_peak_mb']} MiB"
    out.append(_row(f"10 years of 1m bars ({t['bars']:,} bars, parquet {t['parquet_mb']} MiB): store read / write / "
                    "merge peak", [peaks],
                    f"store imports {t['store_imports_rss_mb']} MiB", "recorded"))
    out.append(_row("job-manager peak loading 5 days into that series",
                    [f"{t['job_manager_peak_mb']} MiB in {t['job_manager_load_s']} s"],
                    f"its idle {t['job_manager_idle_rss_mb']} MiB", "recorded"))
    qs = [r["queued_1000"] for r in runs]
    out.append(_row("1,000 queued dummy ops: orchestrator RSS", [f"{x['orchestrator_rss_queued_mb']} MiB" for x in qs],
                    "none queued: " + " / ".join(f"{x['orchestrator_rss_idle_mb']} MiB" for x in qs), "recorded"))
    out.append(_row("`ktrdr ops list` with 1,000 queued", [f"{x['ops_list_s']:.2f} s" for x in qs],
                    "none: " + " / ".join(f"{x['ops_list_empty_s']:.2f} s" for x in qs) + f"; python start "
                    f"{q['python_startup_s']:.2f} s", "recorded"))
    del rp
    return out


def main(argv: list[str]) -> None:
    dirs = [Path(a) for a in argv]
    for suite, fn in (("backbone", backbone), ("workflows", workflows), ("scale", scale), ("memory", memory)):
        runs = _load(dirs, suite)
        if runs:
            print(f"**{suite}** ({len(runs)} runs)\n")
            print("\n".join(fn(runs)))
            print()


if __name__ == "__main__":
    main(sys.argv[1:])
