"""Writes a population of format-1 leads as Redis protocol, for
`redis-cli --pipe` (bench/migrate.sh).

usage: format1_population.py LEADS PARTITIONS > population.resp

Each lead is a copy, under a new id, of one of the leads of the format-1
fixture (tests/fixtures/format1/keys.json): its hash, its side keys (seen,
days, hist, stages, scores), its entry in its partition's lead index and
its totals in the cohort distributions it is counted in, moved to the
partition its new id hashes to (FNV-1a, as src/store/redis/keys.rs). Key
prefix `ls`.
"""

import json
import os
import re
import sys

leads, partitions = int(sys.argv[1]), int(sys.argv[2])
here = os.path.dirname(os.path.abspath(__file__))
rows = json.load(open(os.path.join(here, "..", "tests", "fixtures", "format1", "keys.json")))
by_key = {r["key"]: r for r in rows}

# Fixture leads (not visitors) with their side keys and cohort totals.
templates = []
lead_key = re.compile(r"^ls:\{p(\d+)\}:lead:([A-Za-z0-9._~-]+)$")
for r in rows:
    m = lead_key.match(r["key"])
    if not m or r["type"] != "hash":
        continue
    partition, lead_id = m.group(1), m.group(2)
    sides = {s: by_key.get(f"{r['key']}:{s}") for s in ("seen", "days", "hist", "stages", "scores")}
    index = next(v for k, v in by_key[f"ls:{{p{partition}}}:leads"]["value"] if k == lead_id)
    cohort = []
    if "rg" in r["value"]:
        month, _, _, groups, models = json.loads(r["value"]["rg"])
        for model in models:
            for group in groups:
                zset = by_key[f"ls:{{p{partition}}}:cohort:{month}:{model}:{group}"]["value"]
                total = next(s for member, s in zset if member == lead_id)
                cohort.append((f"cohort:{month}:{model}:{group}", total))
    templates.append((r["value"], sides, index, cohort))

out = sys.stdout.buffer


def command(*args):
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    out.write(b"".join(parts))


def partition_of(lead_id):
    h = 0xCBF29CE484222325
    for b in lead_id.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % partitions


for i in range(leads):
    fields, sides, index, cohort = templates[i % len(templates)]
    lead_id = f"m{i:07d}"
    base = f"ls:{{p{partition_of(lead_id)}}}:"
    key = f"{base}lead:{lead_id}"
    hash_args = [x for kv in fields.items() for x in kv]
    command("HSET", key, *hash_args)
    if sides["seen"]:
        command("ZADD", f"{key}:seen", *[x for member, s in sides["seen"]["value"] for x in (s, member)])
    if sides["days"]:
        command("HSET", f"{key}:days", *[x for kv in sides["days"]["value"].items() for x in kv])
    for side in ("hist", "stages", "scores"):
        if sides[side]:
            command("RPUSH", f"{key}:{side}", *sides[side]["value"])
    command("ZADD", f"{base}leads", index, lead_id)
    for name, total in cohort:
        command("ZADD", f"{base}{name}", total, lead_id)
