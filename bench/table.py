#!/usr/bin/env python3
"""Prints bench/run.sh's results (JSON lines) as a table with ratios to the
ceilings measured in the same run, and each target met or missed.

    bench/table.py RESULTS.jsonl [MORE.jsonl ...]

With several runs, every figure (ratios included, each computed within its
own run) is the median over the runs."""
import json
import statistics
import sys


def figures(path):
    rows = {}
    for line in open(path):
        item = json.loads(line)
        rows[item["name"]] = item["report"]
    f = {}
    for name in ("store_path", "noop_ceiling", "record", "record_open_half", "record_batch", "score", "mixed", "overload_2x"):
        r = rows[name]
        f[name] = r["calls_per_s"]
        f[name + ".p50"] = r["ok_latency"]["p50"] / 1000
        f[name + ".p99"] = r["ok_latency"]["p99"] / 1000
    for p in ("p1", "p16"):
        f["anchor_" + p] = rows["minimal_update_" + p]["calls_per_s"]
        f["anchor_" + p + ".cpu"] = rows["minimal_update_" + p]["redis_cpu_us"]
    f["record/anchor"] = rows["record"]["calls_per_s"] / f["anchor_p1"]
    f["record.cpu"] = rows["record_redis_cpu"]["seconds"] * 1e6 / rows["record"]["sent"]
    f["cpu/anchor"] = f["record.cpu"] / f["anchor_p1.cpu"]
    f["record/noop"] = rows["record"]["calls_per_s"] / rows["noop_ceiling"]["calls_per_s"]
    f["score/noop"] = rows["score"]["calls_per_s"] / rows["noop_ceiling"]["calls_per_s"]
    f["open.rate"] = rows["record_open_half"]["offered_rate"]
    f["open.errors"] = sum(rows["record_open_half"]["errors"].values())
    f["batch.signals"] = rows["record_batch"]["signals_per_s"]
    over = rows["overload_2x"]
    f["over.rate"] = over["offered_rate"]
    f["over.goodput"] = over["calls_per_s"] / rows["record"]["calls_per_s"]
    f["over.refused"] = over["errors"].get("ResourceExhausted", 0) / over["seconds"]
    f["over.refused_sent_p99"] = (over.get("shed_sent_latency") or {}).get("p99", 0) / 1000
    f["over.refused_due_p99"] = (over.get("shed_latency") or {}).get("p99", 0) / 1000
    f["over.rss_before"] = rows["overload_rss"]["before_kib"] / 1024
    f["over.rss_after"] = rows["overload_rss"]["after_kib"] / 1024
    commands = rows["redis_commands"]
    f["batch/anchor"] = f["batch.signals"] / f["anchor_p16"]
    f["evalsha_per_call"] = commands["evalsha"] / rows["record"]["sent"]
    f["commands_per_call"] = commands["commands"] / rows["record"]["sent"]
    f["script_commands_per_call"] = (commands["commands"] - commands["evalsha"]) / rows["record"]["sent"]
    f["memory_kib"] = rows["memory_20_signals"]["bytes"] / 1024
    return f


runs = [figures(path) for path in sys.argv[1:]]
m = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
print(f"({len(runs)} run{'s' if len(runs) > 1 else ''}; median of each figure)\n" if len(runs) > 1 else "")
print("| measurement | calls/s | p50 | p99 | against the ceilings and targets |")
print("|---|---|---|---|---|")


def verdict(ok):
    return "met" if ok else "missed"


def row(what, key, note=""):
    print(f"| {what} | {m[key]:,.0f} | {m[key + '.p50']:.2f} ms | {m[key + '.p99']:.2f} ms | {note} |")


print(
    f"| **physical anchor**: minimal one-round-trip lead update (`redis-benchmark`, 50 clients), unpipelined | "
    f"{m['anchor_p1']:,.0f} | | | Redis CPU {m['anchor_p1.cpu']:.1f} µs/call |"
)
print(f"| the same, `-P 16` | {m['anchor_p16']:,.0f} | | | Redis CPU {m['anchor_p16.cpu']:.1f} µs/call |")
row("**no-op RPC ceiling**: health `Check` (50 callers)", "noop_ceiling")
row("the service's Redis path without gRPC (read, scoring core, apply; a figure, not a ceiling)", "store_path")
row(
    "`RecordSignals`, 1 signal, 50 callers, closed loop",
    "record",
    f"{m['record/anchor']:.2f}× the anchor (target ≥ 0.5: {verdict(m['record/anchor'] >= 0.5)}); "
    f"{m['record/noop']:.2f}× no-op ceiling (target ≥ 0.4: {verdict(m['record/noop'] >= 0.4)}); "
    f"Redis CPU {m['record.cpu']:.1f} µs/call = {m['cpu/anchor']:.2f}× the anchor's (target ≤ 2: {verdict(m['cpu/anchor'] <= 2)})",
)
row(
    f"the same, open loop at {m['open.rate']:,.0f}/s (50% of the maximum)",
    "record_open_half",
    f"p99 {m['record_open_half.p99']:.2f} ms (target ≤ 2 ms: {verdict(m['record_open_half.p99'] <= 2)}); "
    f"{m['open.errors']:.0f} errors",
)
row(
    "`RecordSignals`, 500 signals over 10,000 leads, 4 callers",
    "record_batch",
    f"{m['batch.signals']:,.0f} signals/s = {m['batch/anchor']:.2f}× the anchor's `-P 16` rate (target ≥ 1: {verdict(m['batch/anchor'] >= 1)})",
)
row("`ScoreLead`, 50 callers", "score", f"{m['score/noop']:.2f}× no-op ceiling")
row("mixed: 80% `RecordSignals`, 20% `ScoreLead`, 50 callers", "mixed")
row(
    f"overload: open loop at {m['over.rate']:,.0f}/s (2× the maximum), `max_in_flight` 64, 400 callers",
    "overload_2x",
    f"goodput {m['over.goodput']:.2f}× the maximum (target ≥ 0.9: {verdict(m['over.goodput'] >= 0.9)}); {m['over.refused']:,.0f}/s refused "
    f"`RESOURCE_EXHAUSTED`, refusal p99 {m['over.refused_sent_p99']:.2f} ms from sending "
    f"(target ≤ 1 ms: {verdict(m['over.refused_sent_p99'] <= 1)}); service RSS {m['over.rss_before']:.0f} → {m['over.rss_after']:.0f} MiB",
)
print()
print(
    f"- Redis calls per single-signal call: **{m['commands_per_call']:.2f}** commands, {m['evalsha_per_call']:.2f} of them "
    f"`EVALSHA` (over the record run, warm-up included, from `INFO commandstats`, which also counts the commands the "
    f"script runs inside). Round trips: 2 (one pipelined read, one script call)."
)
print(
    f"- Redis memory of a lead with 20 single-signal calls (`MEMORY USAGE` over its keys): **{m['memory_kib']:.2f} KiB** "
    f"(target ≤ 1 KiB: {verdict(m['memory_kib'] <= 1)})."
)
