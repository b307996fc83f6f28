"""leadscore from Python over plain HTTP and JSON (the Connect protocol's
unary form), with `requests` and no generated code. Run the file for a tour
against a local service:

    python leadscore_http.py http://127.0.0.1:50051
"""

import datetime
import os
import random
import sys
import time

import requests

# Passing conditions: 503 unavailable, 429 resource_exhausted (load shed).
RETRYABLE = {429, 503}


class LeadscoreError(Exception):
    """A Connect error: its code (`invalid_argument`, …), message, details."""

    def __init__(self, status, body):
        self.status, self.code = status, body.get("code", "unknown")
        self.details = body.get("details", [])
        super().__init__(f"{self.code}: {body.get('message', '')}")


def call(base, method, body, token=None, attempts=6, timeout=5.0):
    """POSTs `body` to `/leadscore.v1.<method>` and answers the JSON reply,
    retrying 429 and 503 (and refused connections) with exponential back-off
    and full jitter."""
    headers = {"Content-Type": "application/json", "Connect-Timeout-Ms": str(int(timeout * 1000))}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in range(attempts):
        try:
            reply = requests.post(f"{base}/leadscore.v1.{method}", json=body, headers=headers, timeout=timeout)
        except requests.ConnectionError:
            if attempt == attempts - 1:
                raise
        else:
            if reply.status_code == 200:
                return reply.json()
            if reply.status_code not in RETRYABLE or attempt == attempts - 1:
                try:
                    body = reply.json()
                except ValueError:  # not the service's answer (a proxy's page)
                    body = {"code": "unknown", "message": f"HTTP {reply.status_code}: {reply.text[:200]}"}
                raise LeadscoreError(reply.status_code, body)
        time.sleep(random.uniform(0, min(5.0, 0.1 * 2**attempt)))


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def record_signals(base, signals):
    return call(base, "LeadScoring/RecordSignals", {"signals": signals})


def score_leads(base, lead_ids):
    answer = call(base, "LeadScoring/ScoreLeads", {"leadIds": lead_ids})
    return {s["leadId"]: s for s in answer.get("scores", [])}


def follow_changes(base, cursor_file, handle):
    """The change feed from a stored cursor, as in leadscore_grpc.py."""
    cursor = open(cursor_file).read().strip() if os.path.exists(cursor_file) else ""
    seen = 0
    while True:
        page = call(base, "Qualification/ListQualificationChanges", {"afterCursor": cursor})
        changes = page.get("changes", [])
        for change in changes:
            handle(change)
            seen += 1
        if page.get("nextCursor", cursor) != cursor:
            cursor = page["nextCursor"]
            with open(cursor_file + ".tmp", "w") as f:
                f.write(cursor)
            os.replace(cursor_file + ".tmp", cursor_file)
        if not changes:
            return seen


def main(base):
    call(base, "LeadScoring/UpsertLead", {"lead": {"leadId": "http-lead-1", "attributes": {"seniority": "vp"}}})
    answer = record_signals(base, [
        {"eventId": "http-1", "leadId": "http-lead-1", "type": "content_download", "occurredAt": now()},
        {"eventId": "http-2", "leadId": "http-lead-1", "type": "content_download", "occurredAt": now()},
        {"eventId": "http-3", "leadId": "http-lead-1", "type": "webinar_attended", "occurredAt": now(),
         "properties": {"campaign": "q4-launch"}},
    ])
    print("recorded:", [r["status"] for r in answer["results"]])
    for lead_id, score in score_leads(base, ["http-lead-1"]).items():
        print(f"{lead_id}: {score['total']:.2f} ({score['stage']})")
    try:
        record_signals(base, [{"eventId": "bad", "leadId": "x", "type": "tiktok_like", "occurredAt": now()}])
    except LeadscoreError as error:
        print("refused:", error)
    follow_changes(base, "changes-http.cursor", lambda c: print(
        "change:", c["leadId"], c["change"].get("from", "STAGE_UNSPECIFIED"), "->", c["change"]["to"]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:50051")
