"""`python -m bench.tables RUN_DIR [RUN_DIR ...]`: the README tables (markdown) from the JSON results
of several runs (each RUN_DIR holds the <suite>.json files `python -m bench` writes to bench/results/),
one value per run where a suite ran in several; the single-run suites print their last run."""

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
    cs = [r["cold_start"] for r in runs]
    out.append(_row("cold start: `ktrdr --help` / `ktrdr ops list` (a connect and a read), ratio to a bare "
                    "interpreter", [f"{x['help_s'] / x['python_startup_s']:.1f}x / "
                                    f"{x['ops_list_s'] / x['python_startup_s']:.1f}x "
                                    f"({x['help_s']:.2f} / {x['ops_list_s']:.2f} s)" for x in cs],
                    "python -c pass: " + " / ".join(f"{x['python_startup_s']:.3f} s" for x in cs), "≤ 4x / ≤ 6x"))
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


def training(runs: list[dict[str, Any]]) -> list[str]:
    o = [r["instrumentation_overhead"] for r in runs]
    c = [r["cancel_latency_training"] for r in runs]
    p = [r["progress_latency_training"] for r in runs]
    k = [r["child_startup"] for r in runs]

    def per(xs: list[dict[str, Any]], key: str, fmt: str) -> list[str]:
        return [format(x[key], fmt) for x in xs]

    return ["| figure | runs 1 · 2 · 3 | baseline, same run | target |", "|---|---|---|---|",
            _row("end to end through the actor vs the faster bare loop (1 or 2 torch threads, in the bench "
                 "process), samples/s ratio, median of 5 interleaved rounds",
                 [f"{x['ratio_median']:.2f} ({x['actor_samples_per_s'] / 1e3:.1f}k vs "
                  f"{max(x['bare_1_thread_samples_per_s'], x['bare_2_threads_samples_per_s']) / 1e3:.1f}k)" for x in o],
                 "bare loop, no validation", "≥ 0.98"),
            _row("the same, vs the bare loop that also validates every epoch (as the trainer does)",
                 per(o, "ratio_vs_bare_with_val", ".2f"), "bare loop + validation", ""),
            _row("the same, vs the bare loop in a process of its own (1 thread, as the child runs)",
                 per(o, "ratio_vs_bare_own_process", ".2f"), "bare loop, own process", ""),
            _row("the training child called directly (no actor, no NATS), samples/s",
                 [f"{x['child_direct_1_thread_samples_per_s'] / 1e3:.1f}k" for x in o],
                 "through the actor: " + " / ".join(f"{x['actor_samples_per_s'] / 1e3:.1f}k" for x in o), ""),
            _row("CPU while training through the actor: child / trainer actor + nats-server + bench (cores)",
                 [f"{x['actor_child_cpu_share']:.2f} / {x['actor_helpers_cpu_share']:.2f}" for x in o], "", ""),
            _row("cancel latency p99 (request → `cancelled` stored)", [f"{x['p99_ms']:.1f} ms" for x in c],
                 "batch: " + " / ".join(f"{x['batch_time_ms']:.1f} ms" for x in c), "≤ batch + 10 ms"),
            _row("progress latency p99 during training (child → stored → follower)",
                 [f"{x['p99_ms']:.2f} ms" for x in p],
                 "child→actor pipe p99: " + " / ".join(f"{x['child_pipe_p99_ms']:.2f} ms" for x in p), "≤ 2 ms"),
            _row("training child start-up (paid once per trainer, in the background)",
                 [f"{x['startup_s_median']:.1f} s" for x in k], "", "")]


def data(runs: list[dict[str, Any]]) -> list[str]:
    out = ["| figure | run | baseline, same run | target |", "|---|---|---|---|"]
    d = runs[-1]
    for key, label in (("load_2y_1h_latency_0.2s", "0.2 s"), ("load_2y_1h_latency_2s", "2 s")):
        x = d[key]
        out.append(_row(f"2 years of AAPL 1h ({x['segments']} segments), gateway latency {label}: concurrent "
                        "segments vs one at a time", [f"{x['speedup']:.2f}x ({x['concurrent_s']:.1f} s, "
                                                      f"{x['concurrent_vs_bound']:.2f}x IB's pacing bound)"],
                        f"one at a time {x['one_at_a_time_s']:.1f} s", "≥ 3x where latency dominates, 0 violations "
                        f"({x['pacing_violations']})"))
    x = d["pacing_bound_1m_90d"]
    out.append(_row(f"pacing-bound load, {x['requests']} requests (windows x{x['pacing_time_scale']})",
                    [f"{x['ratio_to_bound']:.3f}x the bound"], f"lower bound {x['lower_bound_s']:.1f} s",
                    f"≤ 1.2x, 0 violations ({x['pacing_violations']})"))
    x = d["cancel_latency_load"]
    out.append(_row("cancel latency during a load, p99", [f"{x['p99_ms']:.1f} ms"],
                    f"p50 {x['p50_ms']:.1f} ms", "≤ 50 ms"))
    return out


def faults(runs: list[dict[str, Any]]) -> list[str]:
    f = runs[-1]
    out = ["| fault | count | outcome | time to recover | bogus operations | peak memory |",
           "|---|---|---|---|---|---|"]
    for name in ("kill -9 worker", "SIGTERM worker (drain)"):
        x = f[name]
        out.append(f"| {name}, a replica alive | {x['rounds']} | each op completed by the replica; "
                   f"{x['runs_per_op_max']} attempts per op at most (the killed one, then the replica's: never "
                   f"two at once) | next attempt started p50 "
                   f"{x['recover_p50_s']:.1f} s, max {x['recover_max_s']:.1f} s | {x['bogus_ops']} | |")
    x = f["kill -9 nats-server"]
    out.append(f"| kill -9 nats-server, restarted on its store | {x['rounds']} ({x['ops_affected']} ops "
               f"running) | all completed, {x['runs_per_op_max']} run per op max, "
               f"{x['progress_events_lost']} progress events lost | progress resumed p50 "
               f"{x['progress_resumed_p50_s']:.2f} s after restart | {x['bogus_ops']} | |")
    x = f["10,000 hostile messages"]
    out.append(f"| hostile messages on cmd, work, cancel, ib subjects | {x['messages']:,} | all consumed, "
               f"{x['cmd_left']} left in CMD, actors serving | {x['consumed_s']:.1f} s to consume | "
               f"{x['bogus_ops']} | actors {x['actors_peak_rss_mb']:.0f} MiB |")
    x = f["kill -9 OPS leader (3-node cluster)"]
    out.append(f"| kill -9 of the OPS stream's leader, 3-node cluster | {x['rounds']} ({x['ops_affected']} ops "
               f"running) | all completed, {x['events_seen_live_but_not_stored']} events seen live but not stored "
               f"| new leader p50 {x['elect_p50_s']:.1f} s (max {x['elect_max_s']:.1f}); progress paused p50 "
               f"{x['progress_pause_p50_s']:.2f} s | | |")
    return out


def objects(runs: list[dict[str, Any]]) -> list[str]:
    o = runs[-1]
    sr, fr = o["series"], o["series (frame <-> store)"]
    return ["| figure | NATS object store | local Parquet file, same run | ratio |", "|---|---|---|---|",
            f"| write {sr['symbol']} ({sr['bars']:,} bars, {sr['parquet_mb']:.1f} MB parquet), median of "
            f"{sr['rounds (median of)']} | {fr['NATS put s']:.2f} s, peak {fr['NATS put peak MB']:.0f} MB | "
            f"{fr['local write s']:.2f} s | {fr['put / local write']:.2f}x |",
            f"| read it back into a frame | {fr['NATS get s']:.2f} s, peak {fr['NATS get peak MB']:.0f} MB | "
            f"{fr['local read s']:.2f} s, peak {fr['local read peak MB']:.0f} MB | {fr['get / local read']:.2f}x |",
            f"| the job-manager's periodic BARS write (every 30 s) as a share of a long load | "
            f"{fr['job-manager write every 30 s: share']:.3f} | | |"]


def calendar(runs: list[dict[str, Any]]) -> list[str]:
    c = runs[-1]
    out = ["| figure | exchange-calendars (now) | rules (before), same run | |", "|---|---|---|---|"]
    for key in [k for k in c if k.endswith("2025-06-01")]:
        x = c[key]
        out.append(f"| gap analysis, {key} ({x['bars_expected']:,} bars), median of {x['rounds']} | "
                   f"{x['after_median_ms']:.0f} ms | {x['before_median_ms']:.0f} ms | {x['speedup']:.1f}x faster |")
    a = c["AAPL 1m 2015-06-01..2025-06-01"]
    out.append(f"| IB requests for gaps that never existed, per load of that series | 0 | "
               f"{a['phantom_ib_requests_per_load']} ({a['phantom_days']} days) | closures the rules missed: "
               f"{a['unscheduled_closures']} |")
    first = c["AAPL first call in a fresh process, imports included"]
    out.append(f"| first call in a fresh process (imports, building the calendar) | {first['after_median_s']:.2f} s | "
               f"{first['before_median_s']:.2f} s | paid once per process, off the CLI's fast paths |")
    return out


def indicators(runs: list[dict[str, Any]]) -> list[str]:
    i = runs[-1]
    out = [f"| indicator, {i['bars']['count']:,} bars | ours | TA-Lib {i['ta-lib']['version']} | "
           "max relative difference after warm-up |", "|---|---|---|---|"]
    for name, x in i.items():
        if isinstance(x, dict) and "ours_ms" in x:
            out.append(f"| {name} | {x['ours_ms']:.0f} ms | {x['talib_ms']:.1f} ms | "
                       f"{x['max_rel_diff_after_warmup']} |")
    return out


def main(argv: list[str]) -> None:
    dirs = [Path(a) for a in argv]
    for suite, fn in (("backbone", backbone), ("training", training), ("workflows", workflows), ("scale", scale),
                      ("memory", memory), ("data", data), ("faults", faults), ("objects", objects),
                      ("calendar", calendar), ("indicators", indicators)):
        runs = _load(dirs, suite)
        if runs:
            print(f"**{suite}** ({len(runs)} runs)\n")
            print("\n".join(fn(runs)))
            print()


if __name__ == "__main__":
    main(sys.argv[1:])
