"""Webhook delivery latency, from a stage change to the receiver, against
the ceiling measured in the same run: the least work an at-least-once
delivery needs — the event written to Redis (one XADD), read back (one
XRANGE), signed and POSTed to the same receiver at once over a kept-alive
connection. Starts its own redis-server
and leadscore (BINARY, a release build) with one endpoint; leads become
MQLs one at a time (each waits for its delivery, so nothing queues).

Usage: webhook_latency.py BINARY [ROUNDS [LEADS_PER_ROUND]]   (default 3 × 300)
Prints p50 and p99 per round and the medians over rounds.
"""

import base64
import datetime
import hashlib
import hmac
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../clients/python"))
import leadscore_http as h  # noqa: E402

binary = os.path.abspath(sys.argv[1])
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
per_round = int(sys.argv[3]) if len(sys.argv) > 3 else 300
work = tempfile.mkdtemp()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


key = os.urandom(32)
secret = "whsec_" + base64.b64encode(key).decode()
arrived = {}  # webhook-id -> (arrival time, event)
cond = threading.Condition()

# The receiver example in a process of its own (not sharing this one's
# interpreter lock); it prints each event with its arrival time.
RECEIVER = """
import json, sys, time
from http.server import ThreadingHTTPServer
sys.path.insert(0, sys.argv[3])
import webhook_receiver as r
def handle(event_id, event):
    print(json.dumps([event_id, time.time(), event]), flush=True)
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), r.handler_class(r.Receiver(sys.argv[2], handle)))
server.serve_forever()
"""
receiver_port = free_port()
receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(receiver_port), secret,
                             os.path.join(here, "../clients/python")], stdout=subprocess.PIPE, text=True)


def read_arrivals():
    for line in receiver.stdout:
        event_id, at, event = json.loads(line)
        with cond:
            arrived[event_id] = (at, event)
            cond.notify_all()


threading.Thread(target=read_arrivals, daemon=True).start()

redis_port, grpc_port = free_port(), free_port()
redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                         stdout=subprocess.DEVNULL)
config = os.path.join(work, "leadscore.toml")
with open(config, "w") as f:
    f.write(f"""[[webhooks]]
name = "bench"
url = "http://127.0.0.1:{receiver_port}/"
events = ["stage_changed(MQL)"]
secret_env = "BENCH_SECRET"
""")
service = subprocess.Popen([binary, "serve", "--config", config, "--redis-url", f"redis://127.0.0.1:{redis_port}",
                            "--grpc-addr", f"127.0.0.1:{grpc_port}", "--metrics-addr", "off"],
                           env=dict(os.environ, BENCH_SECRET=secret, RUST_LOG="warn"),
                           stderr=open(os.path.join(work, "leadscore.log"), "w"))
base = f"http://127.0.0.1:{grpc_port}"


def wait(check, seconds=10):
    deadline = time.monotonic() + seconds
    with cond:
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out")
            cond.wait(left)


def percentiles(values):
    values = sorted(values)
    return values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))]


def leadscore_round(n, tag):
    """Stage change (the change's own `at`) to the receiver, in ms."""
    out = []
    for i in range(n):
        lead = f"bench-{tag}-{i}"
        h.call(base, "LeadScoring/UpsertLead", {"lead": {"leadId": lead, "attributes": {"seniority": "vp"}}})
        h.record_signals(base, [{"eventId": f"{lead}-{k}", "leadId": lead, "type": t, "occurredAt": h.now()}
                                for k, t in enumerate(["content_download", "content_download", "webinar_attended"])])
        mine = lambda: [v for v in arrived.values() if v[1]["data"].get("leadId") == lead]  # noqa: E731
        wait(lambda: mine())
        at_arrival, event = mine()[0]
        at = datetime.datetime.fromisoformat(event["data"]["change"]["at"].replace("Z", "+00:00")).timestamp()
        out.append((at_arrival - at) * 1000)
    return out


def resp(sock, *args):
    """One Redis command over RESP; the reply's first line (enough here)."""
    sock.sendall(f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a)}\r\n".encode() + a + b"\r\n" for a in (x if isinstance(x, bytes) else str(x).encode()
                                                          for x in args)))
    data = sock.recv(65536)
    assert not data.startswith(b"-"), data
    return data


def ceiling_round(n, tag):
    """The least work a delivery needs, with the same receiver: the event
    written to Redis (one XADD), read back (one XRANGE), signed and POSTed
    on a kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", receiver_port)
    redis_sock = socket.create_connection(("127.0.0.1", redis_port))
    out = []
    for i in range(n):
        event_id = f"direct:{tag}-{i}"
        start = time.time()
        body = json.dumps({"type": "lead.stage_changed", "timestamp": "", "data": {"leadId": event_id}}).encode()
        resp(redis_sock, "XADD", "ceiling", "*", "e", body)
        resp(redis_sock, "XRANGE", "ceiling", "-", "+", "COUNT", "1")
        ts = str(int(time.time()))
        sig = base64.b64encode(hmac.new(key, f"{event_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
        conn.request("POST", "/", body, {"Content-Type": "application/json", "webhook-id": event_id,
                                         "webhook-timestamp": ts, "webhook-signature": f"v1,{sig}"})
        conn.getresponse().read()
        wait(lambda: event_id in arrived)
        out.append((arrived[event_id][0] - start) * 1000)
        resp(redis_sock, "DEL", "ceiling")
    conn.close()
    redis_sock.close()
    return out


try:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", grpc_port), timeout=0.2).close()
            socket.create_connection(("127.0.0.1", receiver_port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    time.sleep(0.5)  # the endpoint's first round sets its start
    leadscore_round(20, "warm")
    ceiling_round(20, "warm")
    ours, floor = [], []
    for k in range(rounds):
        lp50, lp99 = percentiles(leadscore_round(per_round, k))
        cp50, cp99 = percentiles(ceiling_round(per_round, k))
        ours.append((lp50, lp99))
        floor.append((cp50, cp99))
        print(f"round {k + 1}: leadscore p50 {lp50:.2f} ms p99 {lp99:.2f} ms; "
              f"ceiling p50 {cp50:.2f} ms p99 {cp99:.2f} ms")
    m = [statistics.median(x) for x in zip(*ours)]
    c = [statistics.median(x) for x in zip(*floor)]
    print(f"median of {rounds} rounds × {per_round} MQLs: stage change → receiver p50 {m[0]:.2f} ms, "
          f"p99 {m[1]:.2f} ms; ceiling (XADD, XRANGE, signed POST) p50 {c[0]:.2f} ms, "
          f"p99 {c[1]:.2f} ms; ratio p50 {m[0] / c[0]:.1f}×")
finally:
    service.kill()
    redis.kill()
    receiver.kill()
