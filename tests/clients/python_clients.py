"""Runs the Python clients of clients/python against a real service and
checks what they answer: signals recorded once however often sent, scores,
triggers handled and acknowledged, a trigger redelivered after a consumer
crashed before acknowledging it, the change feed resumed from its stored
cursor, retries of passing failures, and errors over HTTP/JSON.

Usage: python_clients.py HOST:PORT (a service whose trigger groups include
"py-crash", with a short trigger_visibility_timeout; scripts/client-check.sh
starts one).
"""

import os
import socket
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../clients/python"))
import leadscore_grpc as g  # noqa: E402
import leadscore_http as h  # noqa: E402

address = sys.argv[1]
base = f"http://{address}"
channel = grpc.insecure_channel(address)
grpc.channel_ready_future(channel).result(timeout=10)
work = tempfile.mkdtemp()

# A VP with two downloads and a webinar: an MQL (the README's lead-99).
g.with_retries(g.rpc.LeadScoringStub(channel).UpsertLead,
               g.pb.UpsertLeadRequest(lead=g.pb.Lead(lead_id="py-1", attributes={"seniority": "vp"})))
batch = [g.signal("py-a", "py-1", "content_download"), g.signal("py-b", "py-1", "content_download"),
         g.signal("py-c", "py-1", "webinar_attended", campaign="q4-launch")]
first = g.record_signals(channel, batch)
assert [r.status for r in first.results] == [g.pb.SIGNAL_STATUS_ACCEPTED] * 3, first
again = g.record_signals(channel, batch)
assert [r.status for r in again.results] == [g.pb.SIGNAL_STATUS_DUPLICATE] * 3, again
scores = g.score_leads(channel, ["py-1", "nobody"])
assert list(scores) == ["py-1"], scores
assert scores["py-1"].stage == g.pb.STAGE_MQL and round(scores["py-1"].behavior) == 31, scores["py-1"]

# Triggers: handled and acknowledged; a crash before the ack means the same
# trigger again, its delivery_count raised, once the visibility timeout passed.
handled = []
assert g.consume_triggers(channel, "automation", "py-worker", handled.append, 2) >= 1
mql = [t for t in handled if t.lead_id == "py-1" and t.definition_id == "sales_alert_new_mql"]
assert len(mql) == 1, handled


def crash(trigger):
    raise RuntimeError(f"crashed while handling {trigger.trigger_id}")


try:
    g.consume_triggers(channel, "py-crash", "py-worker", crash, 5)
    raise AssertionError("the consumer did not crash: no trigger for py-crash")
except RuntimeError as error:
    crashed_on = str(error).rsplit(" ", 1)[1]
# Redelivered once the 1 s visibility timeout passed (give it up to 10 s).
redelivered = []
deadline = time.monotonic() + 10
while time.monotonic() < deadline and not any(t.trigger_id == crashed_on for t in redelivered):
    g.consume_triggers(channel, "py-crash", "py-worker-2", redelivered.append, 1)
again = [t for t in redelivered if t.trigger_id == crashed_on]
assert len(again) == 1 and again[0].delivery_count >= 2, redelivered  # raised: delivered again
late = []
assert g.consume_triggers(channel, "py-crash", "py-worker-2", late.append, 2) == 0 or all(
    t.trigger_id != crashed_on for t in late), "acknowledged, so not delivered again"

# The change feed from a stored cursor: the second run sees nothing new,
# the third only what changed since.
cursor = os.path.join(work, "changes.cursor")
seen = []
assert g.follow_changes(channel, cursor, seen.append) >= 1
assert any(c.lead_id == "py-1" and c.change.to == g.pb.STAGE_MQL for c in seen), seen
assert g.follow_changes(channel, cursor, seen.append) == 0
h.call(base, "LeadScoring/UpsertLead", {"lead": {"leadId": "py-2", "attributes": {"seniority": "vp"}}})
h.record_signals(base, [{"eventId": f"py2-{i}", "leadId": "py-2", "type": t, "occurredAt": h.now()}
                        for i, t in enumerate(["content_download", "content_download", "webinar_attended"])])
newer = []
h_cursor = os.path.join(work, "changes-http.cursor")
with open(h_cursor, "w") as f:
    f.write(open(cursor).read())
assert h.follow_changes(base, h_cursor, newer.append) >= 1
assert {c["leadId"] for c in newer} == {"py-2"}, newer
assert g.follow_changes(channel, cursor, newer.append) >= 1 and newer[-1].lead_id == "py-2"

# HTTP/JSON: the same score as gRPC, errors with their code and details.
http_scores = h.score_leads(base, ["py-1"])
assert abs(http_scores["py-1"]["total"] - scores["py-1"].total) < 1e-9, (http_scores, scores)
try:
    h.record_signals(base, [{"eventId": "x", "leadId": "x", "type": "tiktok_like", "occurredAt": h.now()}])
    raise AssertionError("an undeclared signal type was accepted")
except h.LeadscoreError as error:
    assert (error.status, error.code) == (400, "invalid_argument"), error
    assert error.details[0]["debug"]["fieldViolations"][0]["field"] == "signals[0].type", error.details

# Retries: a service that is not there is UNAVAILABLE, tried `attempts` times.
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    closed = f"127.0.0.1:{s.getsockname()[1]}"
tries = []


def counted(request, timeout):
    tries.append(request)
    return g.rpc.LeadScoringStub(grpc.insecure_channel(closed)).ScoreLead(request, timeout=timeout)


try:
    g.with_retries(counted, g.pb.ScoreLeadRequest(lead_id="py-1"), attempts=3, base=0.01, timeout=1)
    raise AssertionError("a closed port answered")
except grpc.RpcError as error:
    assert error.code() == grpc.StatusCode.UNAVAILABLE and len(tries) == 3, (error.code(), len(tries))
try:
    h.call(f"http://{closed}", "LeadScoring/ScoreLead", {"leadId": "x"}, attempts=2)
    raise AssertionError("a closed port answered over HTTP")
except Exception as error:  # requests.ConnectionError after 2 attempts
    assert "Connection" in type(error).__name__, error
# Retries over HTTP: 503 and 429 are tried again, then the answer is taken;
# a 400 is not retried. A stand-in server answers as told.
import http.server  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402

script = []
asked = []


class Scripted(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        asked.append(self.path)
        status, body = script.pop(0)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


stand_in = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
threading.Thread(target=stand_in.serve_forever, daemon=True).start()
fake = f"http://127.0.0.1:{stand_in.server_address[1]}"
script[:] = [(503, {"code": "unavailable"}), (429, {"code": "resource_exhausted"}), (200, {"score": {"total": 1}})]
assert h.call(fake, "LeadScoring/ScoreLead", {"leadId": "x"}) == {"score": {"total": 1}}
assert asked == ["/leadscore.v1.LeadScoring/ScoreLead"] * 3, asked
script[:] = [(400, {"code": "invalid_argument", "message": "no"}), (200, {})]
try:
    h.call(fake, "LeadScoring/ScoreLead", {"leadId": "x"})
    raise AssertionError("a 400 was retried into a success")
except h.LeadscoreError as error:
    assert (error.status, error.code, len(asked)) == (400, "invalid_argument", 4), (error, asked)
stand_in.shutdown()
print("python clients: passed")
