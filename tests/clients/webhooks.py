"""Webhook delivery against a real receiver that verifies every signature
with the Standard Webhooks reference library (through the receiver example
of clients/python), and that refuses, stalls, times out and drops
deliveries on purpose. Starts its own redis-server and leadscore (with two
endpoints: `crm` takes stage changes, signed with two secrets as in a
rotation; `automation` takes the new-MQL trigger) and checks:

1. every stage change arrives, verified, at least once, a lead's changes in
   the order they happened, despite a first attempt that fails for each;
2. a change made while the receiver is down arrives once it is back, even
   though leadscore was killed (SIGKILL) and restarted meanwhile;
3. a trigger the receiver keeps refusing is a dead letter after
   max_attempts, listed with its error, and arrives when replayed;
4. status and metrics count it; then prints the delivery latency from
   stage change to receiver (p50, p99) over leads becoming MQL one by one.

A third endpoint, `node`, delivers the MQLs to the Node receiver example of
clients/node, which must print each one, verified.

Usage: webhooks.py LEADSCORE_BINARY
"""

import base64
import datetime
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import ThreadingHTTPServer

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients/python"))
import leadscore_http as h  # noqa: E402
import webhook_receiver as r  # noqa: E402

binary = os.path.abspath(sys.argv[1])
work = tempfile.mkdtemp()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secret():
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def wait_for(what, check, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --- Redis and leadscore ---------------------------------------------------
redis_port = free_port()
redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"],
                         stdout=subprocess.DEVNULL)
old, new = secret(), secret()
with open(os.path.join(work, "crm.secret"), "w") as f:
    f.write(f"{new}\n{old}\n")  # rotating: signed with both; the receiver knows only the old one
receiver_port, node_port = free_port(), free_port()
node_secret = secret()
with open(os.path.join(work, "node.secret"), "w") as f:
    f.write(node_secret)
config = os.path.join(work, "leadscore.toml")
with open(config, "w") as f:
    f.write(f"""
[[webhooks]]
name = "crm"
url = "http://127.0.0.1:{receiver_port}/crm"
events = ["stage_changed"]
secret_file = "{work}/crm.secret"
timeout = "500ms"
max_attempts = 10
retry_backoff = "100ms"
max_backoff = "1s"

[[webhooks]]
name = "automation"
url = "http://127.0.0.1:{receiver_port}/automation"
events = ["trigger(sales_alert_new_mql)"]
secret_env = "AUTOMATION_SECRET"
timeout = "500ms"
max_attempts = 3
retry_backoff = "50ms"
max_backoff = "200ms"

[[webhooks]]
name = "node"
url = "http://127.0.0.1:{node_port}/"
events = ["stage_changed(MQL)"]
secret_file = "{work}/node.secret"
""")
clients = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients")
node_out = open(os.path.join(work, "node.out"), "w+")
node = subprocess.Popen(["node", os.path.join(clients, "node/webhook_receiver.js"), str(node_port)],
                        env=dict(os.environ, LEADSCORE_WEBHOOK_SECRET=node_secret), stdout=node_out)


def node_printed():
    node_out.flush()
    with open(node_out.name) as f:
        return f.read()
grpc_port, metrics_port = free_port(), free_port()
base = f"http://127.0.0.1:{grpc_port}"
automation_secret = secret()
log = open(os.path.join(work, "leadscore.log"), "a")


def start_leadscore():
    env = dict(os.environ, AUTOMATION_SECRET=automation_secret, RUST_LOG="warn")
    process = subprocess.Popen([binary, "serve", "--config", config, "--redis-url", f"redis://127.0.0.1:{redis_port}",
                                "--grpc-addr", f"127.0.0.1:{grpc_port}", "--metrics-addr", f"127.0.0.1:{metrics_port}"],
                               env=env, stdout=log, stderr=log)
    wait_for("leadscore to listen", lambda: process.poll() is None and ready())
    return process


def ready():
    try:
        socket.create_connection(("127.0.0.1", grpc_port), timeout=0.2).close()
        return True
    except OSError:
        return False


# --- The receiver ------------------------------------------------------------
lock = threading.Lock()
arrivals = {"crm": [], "automation": []}  # (event id, event, arrival time)
attempts = {}  # (path, event id) -> attempts seen
refused_signatures = []
poisoned = set()  # lead ids whose triggers /automation refuses
FIRST_ATTEMPT = ["refuse-503", "refuse-429", "stall", "time-out", "drop", "ok"]


def handle_for(path):
    def handle(event_id, event):
        with lock:
            arrivals[path].append((event_id, event, time.time()))
    return handle


receivers = {"crm": r.Receiver(old, handle_for("crm")), "automation": r.Receiver(automation_secret,
                                                                                 handle_for("automation"))}
chaos = {"on": True}


def answer(request, status, body=b""):
    try:
        request.send_response(status)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # leadscore gave up on this attempt (its timeout)


def before(request, headers, body):
    """Misbehaves on purpose, or hands the delivery to the path's receiver
    (the example's: verify, de-duplicate, handle); always answers itself."""
    path = request.path.strip("/")
    receiver = receivers.get(path)
    if receiver is None:
        answer(request, 404)
        return True
    if not any(_verifies(hook, headers, body) for hook in receiver.hooks):
        refused_signatures.append(headers.get("webhook-id"))
    key = (path, headers.get("webhook-id"))
    with lock:
        attempts[key] = attempts.get(key, 0) + 1
        n = attempts[key]
    if path == "automation" and any(lead in body.decode() for lead in poisoned):
        answer(request, 500, b"poisoned!")
        return True
    how = FIRST_ATTEMPT[sum(map(ord, key[1])) % len(FIRST_ATTEMPT)] if chaos["on"] and n == 1 else "ok"
    if how == "refuse-503":
        request.send_response(503)
        request.send_header("Retry-After", "1")  # honoured: the next attempt waits a second
        request.send_header("Content-Length", "0")
        request.end_headers()
        return True
    if how == "refuse-429":
        answer(request, 429)
        return True
    if how == "drop":
        request.close_connection = True
        request.connection.shutdown(socket.SHUT_RDWR)
        return True
    if how == "stall":
        time.sleep(0.2)  # slow, within the 500 ms timeout: accepted
    if how == "time-out":
        time.sleep(0.8)  # past the timeout: leadscore gives up on this attempt
    answer(request, receiver.receive(headers, body))
    return True


def _verifies(hook, headers, body):
    try:
        hook.verify(body, headers)
        return True
    except r.WebhookVerificationError:
        return False


class Server:
    def __init__(self):
        self.server = None

    def start(self):
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", receiver_port), r.handler_class(None, before))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


# --- Helpers over HTTP/JSON --------------------------------------------------
def make_mql(lead):
    h.call(base, "LeadScoring/UpsertLead", {"lead": {"leadId": lead, "attributes": {"seniority": "vp"}}})
    signals = [{"eventId": f"{lead}-{i}", "leadId": lead, "type": t, "occurredAt": h.now()}
               for i, t in enumerate(["content_download", "content_download", "webinar_attended"])]
    h.record_signals(base, signals)


def feed_changes(lead_ids):
    changes, cursor = [], ""
    while True:
        page = h.call(base, "Qualification/ListQualificationChanges", {"afterCursor": cursor, "limit": 1000})
        changes += [c for c in page.get("changes", []) if c.get("leadId") in lead_ids]
        if page.get("nextCursor", cursor) == cursor or not page.get("changes"):
            return changes
        cursor = page["nextCursor"]


def crm_ids():
    with lock:
        return [event_id for event_id, _, _ in arrivals["crm"]]


def status(endpoint):
    return h.call(base, "Nurture/GetWebhookStatus", {"endpoint": endpoint})["endpoints"][0]


server = Server()
server.start()
wait_for("the Node receiver to listen", lambda: "receiving webhooks" in node_printed())
leadscore = start_leadscore()
try:
    # 1. Every change arrives, verified, in order per lead, despite failed first attempts.
    leads = [f"wh-{i}" for i in range(12)]
    for lead in leads:
        make_mql(lead)
    for lead in leads[:4]:
        h.call(base, "Qualification/SetStage", {"leadId": lead, "to": "STAGE_SAL", "actor": "rep@example.com"})
    expected = feed_changes(set(leads))
    assert len(expected) == 16, expected
    want = {f"change:{c['changeId']}" for c in expected}
    wait_for("every change at the receiver", lambda: want <= set(crm_ids()))
    for lead in leads:
        order = [f"change:{c['changeId']}" for c in expected if c["leadId"] == lead]
        first_seen = list(dict.fromkeys(i for i in crm_ids() if i in order))
        assert first_seen == order, (lead, first_seen, order)
    # The chaos really happened: every delivery whose first attempt was
    # refused, timed out or dropped was tried again.
    failing = {"refuse-503", "refuse-429", "time-out", "drop"}
    crm_first = {i: FIRST_ATTEMPT[sum(map(ord, i)) % len(FIRST_ATTEMPT)] for i in want}
    failed_first = sum(1 for i, how in crm_first.items() if how in failing)
    assert failed_first >= 1 and all(attempts[("crm", i)] >= 2 for i, how in crm_first.items() if how in failing), \
        (crm_first, attempts)
    wait_for("the MQL triggers at /automation", lambda: len(arrivals["automation"]) >= 12)
    assert {e["data"]["leadId"] for _, e, _ in arrivals["automation"]} == set(leads)
    assert all(e["data"]["definitionId"] == "sales_alert_new_mql" for _, e, _ in arrivals["automation"])
    mqls = [f"change:{c['changeId']} lead.stage_changed {c['leadId']} LEAD -> MQL"
            for c in expected if c["change"]["to"] == "STAGE_MQL"]
    assert len(mqls) == 12
    wait_for("the Node receiver to print the MQLs", lambda: all(m in node_printed() for m in mqls))
    assert status("node").get("failed", "0") == "0", status("node")
    print(f"1. {len(want)} changes and 12 triggers arrived, verified, in order per lead; "
          f"{failed_first} first attempts refused, timed out or dropped (and tried again), others stalled")

    # 2. Receiver down, leadscore killed and restarted: the change still arrives.
    chaos["on"] = False
    server.stop()
    make_mql("down-1")
    time.sleep(1.0)
    leadscore.kill()
    leadscore.wait()
    leadscore = start_leadscore()
    time.sleep(1.0)
    assert not any("down-1" in str(e) for _, e, _ in arrivals["crm"])
    server.start()
    down = feed_changes({"down-1"})
    assert len(down) == 1
    wait_for("the change made while the receiver was down", lambda: f"change:{down[0]['changeId']}" in crm_ids())
    print("2. the change made while the receiver was down arrived after it came back (leadscore killed meanwhile)")

    # 3. Dead letters after max_attempts, then replayed. The /automation
    # endpoint gives up after 3 attempts: down-1's trigger, sent while the
    # receiver was down, is one already; poison-1's, refused, another.
    poisoned.add("poison-1")
    make_mql("poison-1")

    def letters():
        listed = h.call(base, "Nurture/ListWebhookDeadLetters", {"endpoint": "automation"}).get("letters", [])
        return listed if {d["leadId"] for d in listed} == {"down-1", "poison-1"} else None

    dead = wait_for("two dead letters", letters)
    assert len(dead) == 2, dead
    for d in dead:
        assert d["attempts"] == 3 and d["eventType"] == "trigger.fired" and d["eventId"].startswith("trigger:"), d
    by_lead = {d["leadId"]: d for d in dead}
    assert "Connection refused" in by_lead["down-1"]["lastError"], by_lead
    assert "HTTP 500" in by_lead["poison-1"]["lastError"] and "poisoned!" in by_lead["poison-1"]["lastError"], by_lead
    assert attempts[("automation", by_lead["poison-1"]["eventId"])] == 3, attempts
    s = status("automation")
    assert s["deadLetters"] == "2" and "HTTP 500" in s["lastError"] and s["maxAttempts"] == 3, s
    poisoned.clear()
    ids = [d["eventId"] for d in dead]
    replayed = h.call(base, "Nurture/ReplayWebhookDeadLetters", {"endpoint": "automation", "eventIds": ids})
    assert replayed["replayed"] == "2", replayed
    wait_for("the replayed dead letters", lambda: set(ids) <= {i for i, _, _ in arrivals["automation"]})
    s = wait_for("the replay settled", lambda: (lambda s: s if s.get("deadLetters", "0") == "0"
                                                and s.get("replaying", "0") == "0" else None)(status("automation")))
    assert int(s["delivered"]) >= 14 and int(s["failed"]) >= 6 and int(s["retried"]) >= 4, s
    again = h.call(base, "Nurture/ReplayWebhookDeadLetters", {"endpoint": "automation", "eventIds": ids})
    assert again.get("replayed", "0") == "0", again
    print("3. the triggers sent while the receiver was down and the one it refused became dead letters after "
          "3 attempts, and arrived when replayed")

    # 4. Status and metrics.
    crm = status("crm")
    assert crm["url"] == f"http://127.0.0.1:{receiver_port}/…" and int(crm["delivered"]) >= 17, crm
    assert int(crm["failed"]) >= 8 and crm.get("backlog", "0") == "0", crm
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    delivered = re.search(r'leadscore_webhook_events\{endpoint="crm",state="delivered"\} (\d+)', metrics)
    assert delivered and int(delivered.group(1)) >= 17, metrics
    assert 'leadscore_webhook_delivery_latency_seconds_count{endpoint="crm"}' in metrics

    # Latency from stage change to receiver, leads becoming MQL one by one.
    lat = []
    for i in range(int(os.environ.get("WEBHOOK_LATENCY_LEADS", "100"))):
        lead = f"lat-{i}"
        make_mql(lead)
        got = wait_for(f"{lead} at the receiver", lambda: [(e, t) for _, e, t in list(arrivals["crm"])
                                                            if e["data"].get("leadId") == lead])
        event, arrived = got[0]
        at = datetime.datetime.fromisoformat(event["data"]["change"]["at"].replace("Z", "+00:00")).timestamp()
        lat.append((arrived - at) * 1000)
        time.sleep(random.uniform(0, 0.02))
    lat.sort()
    p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    print(f"4. status and metrics agree; stage change to receiver over {len(lat)} MQLs: "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert not refused_signatures, refused_signatures
    print("every delivery's signature verified with standardwebhooks; the Node receiver printed the MQLs, verified")
finally:
    leadscore.kill()
    node.kill()
    redis.kill()
    server.stop()
