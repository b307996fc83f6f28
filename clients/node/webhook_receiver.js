// A webhook receiver for leadscore: checks every delivery's Standard Webhooks
// signature with the reference library (`standardwebhooks`), answers a
// delivery it has already handled without handling it again (leadscore
// delivers at least once; `webhook-id` is stable), and hands each new event
// to a handler.
//
//     LEADSCORE_WEBHOOK_SECRET=whsec_... node webhook_receiver.js 8001
//
// prints each event, e.g.
//
//     change:12/1764860000000-0 lead.stage_changed lead-99 LEAD -> MQL
//
// During a secret rotation leadscore signs with both secrets; this receiver
// accepts either of the secrets in LEADSCORE_WEBHOOK_SECRET (space separated).
"use strict";

const http = require("node:http");
const { Webhook } = require("standardwebhooks");

const MAX_BODY = 1 << 20;

// An http.Server that verifies, de-duplicates and hands on deliveries. A
// handler that throws gets a 500: leadscore tries again later.
function createReceiver(secrets, handle) {
  const hooks = secrets.split(/\s+/).filter(Boolean).map((s) => new Webhook(s));
  const seen = new Set();
  return http.createServer((req, res) => {
    const chunks = [];
    let size = 0;
    req.on("data", (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) req.destroy();
      else chunks.push(chunk);
    });
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      let event = null;
      for (const hook of hooks) {
        try {
          event = hook.verify(body, req.headers);
          break;
        } catch {
          // another secret, or a forgery
        }
      }
      if (event === null) {
        res.writeHead(401).end();
        return;
      }
      const id = req.headers["webhook-id"];
      if (!seen.has(id)) {
        try {
          handle(id, event);
        } catch {
          res.writeHead(500).end();
          return;
        }
        seen.add(id);
      }
      res.writeHead(204).end();
    });
  });
}

function describe(id, event) {
  const data = event.data;
  if (event.type === "lead.erased") {
    // Delete your copy: the lead is named by sha256(lead id) only.
    console.log(id, event.type, data.erased.leadRef);
    return;
  }
  const what =
    event.type === "lead.stage_changed"
      ? `${(data.change.from || "STAGE_UNSPECIFIED").replace("STAGE_", "")} -> ${data.change.to.replace("STAGE_", "")}`
      : data.definitionId;
  console.log(id, event.type, data.leadId || data.visitorId, what);
}

if (require.main === module) {
  const port = Number(process.argv[2] || 8001);
  createReceiver(process.env.LEADSCORE_WEBHOOK_SECRET || "", describe).listen(port, "127.0.0.1", () =>
    console.log(`receiving webhooks on http://127.0.0.1:${port}/`),
  );
}

module.exports = { createReceiver };
