// leadscore from Node over plain HTTP and JSON (the Connect protocol's unary
// form), with the built-in fetch and no generated code. Run the file for a
// tour against a local service:
//
//     node leadscore_http.js http://127.0.0.1:50051

"use strict";

// Passing conditions: 503 unavailable, 429 resource_exhausted (load shed).
const RETRYABLE = new Set([429, 503]);

// A Connect error: its code (`invalid_argument`, …), message and details.
class LeadscoreError extends Error {
  constructor(status, body) {
    super(`${body.code}: ${body.message}`);
    this.status = status;
    this.code = body.code;
    this.details = body.details || [];
  }
}

// POSTs `body` to `/leadscore.v1.<method>` and resolves with the JSON
// reply, retrying 429, 503 and failed connections with exponential
// back-off and full jitter.
async function call(base, method, body, { token, attempts = 6, timeoutMs = 5000 } = {}) {
  const headers = { "Content-Type": "application/json", "Connect-Timeout-Ms": String(timeoutMs) };
  if (token) headers.Authorization = `Bearer ${token}`;
  for (let attempt = 0; ; attempt++) {
    let reply;
    try {
      reply = await fetch(`${base}/leadscore.v1.${method}`, {
        method: "POST",
        headers,
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (error) {
      // fetch fails with a TypeError when it cannot connect; a timeout is
      // not retried (the call may have been done).
      if (!(error instanceof TypeError) || attempt === attempts - 1) throw error;
    }
    if (reply) {
      if (reply.ok) return reply.json();
      if (!RETRYABLE.has(reply.status) || attempt === attempts - 1) {
        const text = await reply.text();
        let body;
        try {
          body = JSON.parse(text);
        } catch {
          body = { code: "unknown", message: `HTTP ${reply.status}: ${text.slice(0, 200)}` }; // not the service's answer
        }
        throw new LeadscoreError(reply.status, body);
      }
    }
    await new Promise((r) => setTimeout(r, Math.random() * Math.min(5000, 100 * 2 ** attempt)));
  }
}

const now = () => new Date().toISOString();
const recordSignals = (base, signals) => call(base, "LeadScoring/RecordSignals", { signals });

async function scoreLeads(base, leadIds) {
  const answer = await call(base, "LeadScoring/ScoreLeads", { leadIds });
  return Object.fromEntries((answer.scores || []).map((s) => [s.leadId, s]));
}

// The change feed from the cursor stored in `cursorFile`, as in
// leadscore_grpc.js: each change to `handle`, the cursor stored after every
// page (a temporary file renamed over it). Run again to continue.
async function followChanges(base, cursorFile, handle) {
  const fs = require("node:fs");
  let cursor = fs.existsSync(cursorFile) ? fs.readFileSync(cursorFile, "utf8").trim() : "";
  let seen = 0;
  for (;;) {
    const page = await call(base, "Qualification/ListQualificationChanges", { afterCursor: cursor });
    const changes = page.changes || [];
    for (const change of changes) {
      await handle(change);
      seen++;
    }
    if ((page.nextCursor ?? cursor) !== cursor) {
      cursor = page.nextCursor;
      fs.writeFileSync(`${cursorFile}.tmp`, cursor);
      fs.renameSync(`${cursorFile}.tmp`, cursorFile);
    }
    if (changes.length === 0) return seen;
  }
}

async function main(base) {
  await call(base, "LeadScoring/UpsertLead", { lead: { leadId: "node-http-1", attributes: { seniority: "vp" } } });
  const answer = await recordSignals(base, [
    { eventId: "nh-1", leadId: "node-http-1", type: "content_download", occurredAt: now() },
    { eventId: "nh-2", leadId: "node-http-1", type: "content_download", occurredAt: now() },
    { eventId: "nh-3", leadId: "node-http-1", type: "webinar_attended", occurredAt: now(), properties: { campaign: "q4-launch" } },
  ]);
  console.log("recorded:", answer.results.map((r) => r.status));
  for (const [leadId, score] of Object.entries(await scoreLeads(base, ["node-http-1"]))) {
    console.log(`${leadId}: ${score.total.toFixed(2)} (${score.stage})`);
  }
  try {
    await recordSignals(base, [{ eventId: "bad", leadId: "x", type: "tiktok_like", occurredAt: now() }]);
  } catch (error) {
    console.log("refused:", error.message);
  }
  await followChanges(base, "changes-http.cursor", (ch) =>
    console.log("change:", ch.leadId, ch.change.from || "STAGE_UNSPECIFIED", "->", ch.change.to),
  );
}

module.exports = { call, recordSignals, scoreLeads, followChanges, now, LeadscoreError };

if (require.main === module) {
  main(process.argv[2] || "http://127.0.0.1:50051").catch((error) => {
    console.error(error.message);
    process.exit(1);
  });
}
