"""A webhook receiver for leadscore: checks every delivery's Standard
Webhooks signature with the reference library (`standardwebhooks`), answers
a delivery it has already handled without handling it again (leadscore
delivers at least once; `webhook-id` is stable), and hands each new event to
a handler.

    LEADSCORE_WEBHOOK_SECRET=whsec_... python webhook_receiver.py 8000

prints each event, e.g.

    change:12/1764860000000-0 lead.stage_changed lead-99 LEAD -> MQL
    trigger:12/1764860000000-0 trigger.fired lead-99 sales_alert_new_mql

During a secret rotation leadscore signs with both secrets; this receiver
accepts either of the secrets in LEADSCORE_WEBHOOK_SECRET (space separated).
"""

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError  # noqa: F401 (re-exported)


class Receiver:
    """Verifies, de-duplicates and hands on deliveries."""

    def __init__(self, secrets, handle):
        self.hooks = [Webhook(s) for s in secrets.split()]
        self.handle = handle
        self.seen = set()
        self.lock = threading.Lock()

    def receive(self, headers, body):
        """The HTTP status to answer: 401 for a bad signature, 200 otherwise
        (a duplicate is answered 200 and not handled again). A handler that
        raises gets 500: leadscore tries again later."""
        for hook in self.hooks:
            try:
                event = hook.verify(body, headers)
                break
            except WebhookVerificationError:
                continue
        else:
            return 401
        event_id = headers["webhook-id"]
        # One delivery at a time: a retry that arrives while the first is
        # still being handled waits, then finds it handled.
        with self.lock:
            if event_id not in self.seen:
                self.handle(event_id, event)
                self.seen.add(event_id)
        return 200


def handler_class(receiver, before=None):
    """An http.server handler for `receiver`. `before(headers, body)` may
    answer first (tests use it to refuse, stall or drop deliveries)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if before is not None and before(self, headers, body):
                return
            try:
                status = receiver.receive(headers, body)
            except Exception:  # the handler failed: have it sent again
                status = 500
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


def describe(event_id, event):
    data = event["data"]
    if event["type"] == "lead.erased":
        # Delete your copy: the lead is named by sha256(lead id) only.
        print(event_id, event["type"], data["erased"]["leadRef"], flush=True)
        return
    if event["type"] == "lead.stage_changed":
        change = data["change"]
        what = f"{change.get('from', 'STAGE_UNSPECIFIED').removeprefix('STAGE_')} -> {change['to'].removeprefix('STAGE_')}"
    else:
        what = data["definitionId"]
    print(event_id, event["type"], data.get("leadId") or data.get("visitorId"), what, flush=True)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    receiver = Receiver(os.environ["LEADSCORE_WEBHOOK_SECRET"], describe)
    server = ThreadingHTTPServer(("127.0.0.1", port), handler_class(receiver))
    print(f"receiving webhooks on http://127.0.0.1:{port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
