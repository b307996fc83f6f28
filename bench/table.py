#!/usr/bin/env python3
"""Prints bench/run.sh's results (JSON lines) as a table with ratios to the
ceilings measured in the same run, and each target met or missed."""
import json
import sys

rows = {}
for line in open(sys.argv[1]):
    item = json.loads(line)
    rows[item["name"]] = item["report"]

redis = rows["redis_ceiling"]["calls_per_s"]
noop = rows["noop_ceiling"]["calls_per_s"]
record = rows["record"]
ms = lambda us: f"{us / 1000:.2f} ms"


def line(what, r, note=""):
    lat = r["ok_latency"]
    print(f"| {what} | {r['calls_per_s']:,.0f} | {ms(lat['p50'])} | {ms(lat['p99'])} | {note} |")


print("| measurement | calls/s | p50 | p99 | notes |")
print("|---|---|---|---|---|")
line("Redis ceiling: the ingest script calls of a single-signal call, sent by the store (50 callers)", rows["redis_ceiling"])
line("no-op RPC ceiling: health Check (50 callers)", rows["noop_ceiling"])
line(
    "RecordSignals, 1 signal, 50 callers, closed loop",
    record,
    f"{record['calls_per_s'] / redis:.2f}× Redis ceiling (target ≥ 0.5), {record['calls_per_s'] / noop:.2f}× no-op ceiling (target ≥ 0.4)",
)
half = rows["record_open_half"]
line(
    f"the same, open loop at {half['offered_rate']:,.0f}/s (50% of max)",
    half,
    f"p99 {ms(half['ok_latency']['p99'])} (target ≤ 5 ms); errors {half['errors'] or 'none'}",
)
batch = rows["record_batch"]
line(
    "RecordSignals, 500 signals over 10,000 leads, 4 callers",
    batch,
    f"{batch['signals_per_s']:,.0f} signals/s (target ≥ 150,000)",
)
line("ScoreLead, 50 callers", rows["score"], f"{rows['score']['calls_per_s'] / noop:.2f}× no-op ceiling")
line("mixed 80% RecordSignals / 20% ScoreLead, 50 callers", rows["mixed"])
over = rows["overload_2x"]
shed = over.get("shed_latency") or {}
shed_sent = over.get("shed_sent_latency") or {}
refused = over["errors"].get("ResourceExhausted", 0)
line(
    f"overload: open loop at {over['offered_rate']:,.0f}/s (2× max), max_in_flight 64",
    over,
    f"goodput {over['calls_per_s'] / record['calls_per_s']:.2f}× max (target ≥ 0.9); "
    f"{refused:,} refused, refusal p99 {ms(shed_sent.get('p99', 0))} from sending, {ms(shed.get('p99', 0))} from due (target ≤ 1 ms); "
    f"service RSS {rows['overload_rss']['before_kib'] / 1024:.0f} → {rows['overload_rss']['after_kib'] / 1024:.0f} MiB",
)
commands, evalsha = rows["redis_commands"]["commands"], rows["redis_commands"]["evalsha"]
other = commands - evalsha
print()
print(
    f"Redis round trips per single-signal call: {evalsha / record['sent']:.2f} EVALSHA per call "
    f"({evalsha:,} for {record['sent']:,} calls, warm-up included; target 1); INFO commandstats also counts the "
    f"commands scripts run: {other / record['sent']:.1f} per call inside the script"
)
print(f"Redis memory of a lead with 20 single-signal calls: {rows['memory_20_signals']['bytes'] / 1024:.1f} KiB (target ≤ 2 KiB)")
