// leadscore from Node over gRPC: @grpc/grpc-js with the proto loaded at run
// time by @grpc/proto-loader (no generated files). Each function is one
// thing an integration does; run the file for a tour against a local
// service:
//
//     node leadscore_grpc.js 127.0.0.1:50051

"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const definition = protoLoader.loadSync("leadscore/v1/leadscore.proto", {
  includeDirs: [path.join(__dirname, "../../proto")],
  longs: String, // 64-bit counters as strings, as in proto3 JSON
  enums: String, // STAGE_MQL, not 3
  defaults: true,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).leadscore.v1;

// Passing conditions: the store is down or busy, the service sheds load.
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

function clients(address, credentials = grpc.credentials.createInsecure()) {
  return {
    scoring: new v1.LeadScoring(address, credentials),
    qualification: new v1.Qualification(address, credentials),
    nurture: new v1.Nurture(address, credentials),
  };
}

function unary(client, method, request, timeoutMs) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMs }, (error, answer) =>
      error ? reject(error) : resolve(answer),
    );
  });
}

// Calls `method`, retrying passing failures with exponential back-off and
// full jitter. Safe for RecordSignals: a signal sent again is recognised by
// its eventId and counted once.
async function withRetries(client, method, request, { attempts = 6, baseMs = 100, capMs = 5000, timeoutMs = 5000 } = {}) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await unary(client, method, request, timeoutMs);
    } catch (error) {
      if (!RETRYABLE.has(error.code) || attempt === attempts - 1) throw error;
      await new Promise((r) => setTimeout(r, Math.random() * Math.min(capMs, baseMs * 2 ** attempt)));
    }
  }
}

function signal(eventId, leadId, type, properties = {}, at = new Date()) {
  const millis = at.getTime();
  return {
    eventId,
    leadId,
    type,
    properties,
    occurredAt: { seconds: String(Math.floor(millis / 1000)), nanos: (millis % 1000) * 1e6 },
  };
}

const recordSignals = (c, signals) => withRetries(c.scoring, "RecordSignals", { signals });

// The scores now, keyed by lead id (unknown ids are left out).
async function scoreLeads(c, leadIds) {
  const answer = await withRetries(c.scoring, "ScoreLeads", { leadIds });
  return Object.fromEntries(answer.scores.map((s) => [s.leadId, s]));
}

// Handles the group's triggers for `seconds`, acknowledging each after
// `handle` resolved: at-least-once. A consumer that crashes before the
// acknowledgement gets the trigger again (deliveryCount raised) once the
// visibility timeout passed, so `handle` must tolerate a triggerId seen
// before; after `trigger_max_deliveries` deliveries a trigger becomes a dead
// letter of the group instead (ListDeadLetters, ReplayDeadLetters). One
// trigger is handled at a time (the stream waits meanwhile) and at most
// `maxInFlight` are held unacknowledged. The group's position lives in the
// service: a new stream resumes it. Resolves with the number handled;
// rejects with what `handle` or the acknowledgement threw.
async function consumeTriggers(c, group, consumer, handle, seconds, maxInFlight = 16) {
  const stream = c.nurture.StreamTriggers({ group, consumer, maxInFlight }, { deadline: Date.now() + seconds * 1000 });
  let handled = 0;
  let failure;
  try {
    for await (const { trigger } of stream) {
      try {
        await handle(trigger);
        await withRetries(c.nurture, "AckTriggers", { group, triggerIds: [trigger.triggerId] });
        handled++;
      } catch (error) {
        failure = error;
        break;
      }
    }
  } catch (error) {
    // The time given is up; anything else is the stream's failure.
    if (error.code !== grpc.status.DEADLINE_EXCEEDED) throw error;
  } finally {
    stream.cancel();
  }
  if (failure) throw failure;
  return handled;
}

// Reads the qualification change feed from the cursor stored in
// `cursorFile` (from the oldest kept when there is none), handing each
// change to `handle` and storing the cursor after every page (a temporary
// file renamed over it). Run again to continue where it stopped.
async function followChanges(c, cursorFile, handle) {
  let cursor = fs.existsSync(cursorFile) ? fs.readFileSync(cursorFile, "utf8").trim() : "";
  let seen = 0;
  for (;;) {
    const page = await withRetries(c.qualification, "ListQualificationChanges", { afterCursor: cursor });
    for (const change of page.changes) {
      await handle(change);
      seen++;
    }
    if (page.nextCursor !== cursor) {
      cursor = page.nextCursor;
      fs.writeFileSync(`${cursorFile}.tmp`, cursor);
      fs.renameSync(`${cursorFile}.tmp`, cursorFile);
    }
    if (page.changes.length === 0) return seen;
  }
}

async function main(address) {
  const c = clients(address);
  await withRetries(c.scoring, "UpsertLead", { lead: { leadId: "node-lead-1", attributes: { seniority: "vp" } } });
  const answer = await recordSignals(c, [
    signal("node-1", "node-lead-1", "content_download"),
    signal("node-2", "node-lead-1", "content_download"),
    signal("node-3", "node-lead-1", "webinar_attended", { campaign: "q4-launch" }),
  ]);
  console.log("recorded:", answer.results.map((r) => r.status));
  for (const [leadId, score] of Object.entries(await scoreLeads(c, ["node-lead-1"]))) {
    console.log(`${leadId}: ${score.total.toFixed(2)} (${score.stage})`);
  }
  await consumeTriggers(c, "automation", "node-worker", (t) => console.log("trigger:", t.definitionId, t.leadId), 3);
  await followChanges(c, "changes.cursor", (ch) => console.log("change:", ch.leadId, ch.change.from, "->", ch.change.to));
}

module.exports = { clients, withRetries, signal, recordSignals, scoreLeads, consumeTriggers, followChanges, grpc };

if (require.main === module) {
  main(process.argv[2] || "127.0.0.1:50051").then(
    () => process.exit(0),
    (error) => {
      console.error(error.message);
      process.exit(1);
    },
  );
}
