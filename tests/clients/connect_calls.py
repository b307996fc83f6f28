"""The first calls of docs/http-and-clients.md over every protocol the gRPC port speaks:
`buf curl --protocol connect`, `buf curl --protocol grpcweb` (both through
reflection, over HTTP/1.1) and plain `curl` with JSON. Each answer is
checked, and the three must agree on the score.

Usage: connect_calls.py BUF ADDR (host:port of a service with the embedded
store and the default rules).
"""

import datetime
import json
import subprocess
import sys

buf, addr = sys.argv[1], sys.argv[2]
base = f"http://{addr}/leadscore.v1.LeadScoring"
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args):
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def buf_curl(protocol, method, body):
    code, out, err = run([buf, "curl", "--protocol", protocol, "--data", json.dumps(body), f"{base}/{method}"])
    assert code == 0, f"buf curl --protocol {protocol} {method}: exit {code}: {out} {err}"
    return json.loads(out)


def curl(method, body):
    code, out, err = run(
        ["curl", "-sS", "-w", "\n%{http_code}", "-H", "Content-Type: application/json", "--data", json.dumps(body),
         f"{base}/{method}"]
    )
    assert code == 0, f"curl {method}: exit {code}: {err}"
    text, status = out.rsplit("\n", 1)
    return int(status), json.loads(text)


checked = 0
for protocol, lead in [("connect", "lead-connect"), ("grpcweb", "lead-grpcweb"), ("curl", "lead-curl")]:
    calls = {
        "UpsertLead": {"lead": {"leadId": lead, "accountId": "acme",
                                "attributes": {"seniority": "vp", "company_size": "1200", "country": "de"}}},
        "RecordSignals": {"signals": [{"eventId": f"{lead}-1", "leadId": lead, "type": "demo_requested",
                                       "occurredAt": now, "properties": {"campaign": "q4-launch"}}]},
        "ScoreLead": {"leadId": lead},
        "ScoreLeads": {"leadIds": [lead, "nobody"]},
    }
    answers = {}
    for method, body in calls.items():
        if protocol == "curl":
            status, answers[method] = curl(method, body)
            assert status == 200, f"curl {method}: HTTP {status}: {answers[method]}"
        else:
            answers[method] = buf_curl(protocol, method, body)
        checked += 1
    assert answers["UpsertLead"]["lead"]["leadId"] == lead, answers["UpsertLead"]
    assert answers["RecordSignals"]["results"][0]["status"] == "SIGNAL_STATUS_ACCEPTED", answers["RecordSignals"]
    score = answers["ScoreLead"]["score"]
    assert score["leadId"] == lead and score["total"] > 0, score
    assert answers["ScoreLeads"]["notFoundLeadIds"] == ["nobody"], answers["ScoreLeads"]
    assert answers["ScoreLeads"]["scores"][0]["total"] == score["total"]
    print(f"{protocol}: {lead} scored {score['total']}")

totals = {buf_curl(p, "ScoreLead", {"leadId": lead})["score"]["total"]
          for p in ("connect", "grpcweb") for lead in ("lead-connect", "lead-grpcweb", "lead-curl")}
assert len(totals) == 1, f"the same lead history scored differently across protocols: {totals}"

# Errors: Connect's JSON shape with the field violations, the HTTP status of
# the code.
status, error = curl("RecordSignals", {"signals": [{"eventId": "e", "leadId": "l", "type": "tiktok_like",
                                                     "occurredAt": now}]})
assert status == 400 and error["code"] == "invalid_argument", (status, error)
assert error["details"][0]["debug"]["fieldViolations"][0]["field"] == "signals[0].type", error
status, error = curl("ScoreLead", {"leadId": "nobody"})
assert (status, error["code"]) == (404, "not_found"), (status, error)
code, out, err = run([buf, "curl", "--protocol", "connect", "--data", '{"leadId":"nobody"}', f"{base}/ScoreLead"])
assert code != 0 and '"not_found"' in out + err, (code, out, err)
print(f"connect-calls: {checked} calls and 3 errors answered as expected")
