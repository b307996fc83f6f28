// Runs the Node clients of clients/node against a real service and checks
// what they answer: signals recorded once however often sent, scores,
// triggers handled and acknowledged, a trigger redelivered after a consumer
// crashed before acknowledging it, the change feed resumed from its stored
// cursor, retries of passing failures, and errors over HTTP/JSON.
//
// Usage: node node_clients.js HOST:PORT (a service whose trigger groups
// include "node-crash", with a short trigger_visibility_timeout;
// scripts/client-check.sh starts one).

"use strict";

const assert = require("node:assert/strict");
const fs = require("node:fs");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const g = require("../../clients/node/leadscore_grpc.js");
const h = require("../../clients/node/leadscore_http.js");

const address = process.argv[2];
const base = `http://${address}`;

async function freePort() {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function main() {
  const c = g.clients(address);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "leadscore-node-"));

  await g.withRetries(c.scoring, "UpsertLead", { lead: { leadId: "node-1", attributes: { seniority: "vp" } } });
  const batch = [
    g.signal("n-a", "node-1", "content_download"),
    g.signal("n-b", "node-1", "content_download"),
    g.signal("n-c", "node-1", "webinar_attended", { campaign: "q4-launch" }),
  ];
  const first = await g.recordSignals(c, batch);
  assert.deepEqual(first.results.map((r) => r.status), Array(3).fill("SIGNAL_STATUS_ACCEPTED"));
  const again = await g.recordSignals(c, batch);
  assert.deepEqual(again.results.map((r) => r.status), Array(3).fill("SIGNAL_STATUS_DUPLICATE"));
  const scores = await g.scoreLeads(c, ["node-1", "nobody"]);
  assert.deepEqual(Object.keys(scores), ["node-1"]);
  assert.equal(scores["node-1"].stage, "STAGE_MQL");
  assert.equal(Math.round(scores["node-1"].behavior), 31);

  // Triggers: handled and acknowledged; a crash before the ack means the
  // same trigger again, its deliveryCount raised, after the visibility timeout.
  const handled = [];
  assert.ok((await g.consumeTriggers(c, "automation", "node-worker", (t) => handled.push(t), 2)) >= 1);
  const mql = handled.filter((t) => t.leadId === "node-1" && t.definitionId === "sales_alert_new_mql");
  assert.equal(mql.length, 1, JSON.stringify(handled));
  let crashedOn;
  await assert.rejects(
    g.consumeTriggers(c, "node-crash", "node-worker", (t) => {
      crashedOn = t.triggerId;
      throw new Error("crashed");
    }, 5),
    /crashed/,
  );
  assert.ok(crashedOn, "a trigger reached the crashing consumer");
  // Redelivered once the 1 s visibility timeout passed (give it up to 10 s).
  const redelivered = [];
  const deadline = Date.now() + 10000;
  while (Date.now() < deadline && !redelivered.some((t) => t.triggerId === crashedOn)) {
    await g.consumeTriggers(c, "node-crash", "node-worker-2", (t) => redelivered.push(t), 1);
  }
  const same = redelivered.filter((t) => t.triggerId === crashedOn);
  assert.equal(same.length, 1, JSON.stringify(redelivered));
  assert.ok(Number(same[0].deliveryCount) >= 2, same[0].deliveryCount); // raised: delivered again

  // The change feed from a stored cursor.
  const cursor = path.join(work, "changes.cursor");
  const seen = [];
  assert.ok((await g.followChanges(c, cursor, (ch) => seen.push(ch))) >= 1);
  assert.ok(seen.some((ch) => ch.leadId === "node-1" && ch.change.to === "STAGE_MQL"));
  assert.equal(await g.followChanges(c, cursor, (ch) => seen.push(ch)), 0);
  const seenCursor = fs.readFileSync(cursor, "utf8");
  await h.call(base, "LeadScoring/UpsertLead", { lead: { leadId: "node-2", attributes: { seniority: "vp" } } });
  await h.recordSignals(base, ["content_download", "content_download", "webinar_attended"].map((type, i) => ({
    eventId: `n2-${i}`, leadId: "node-2", type, occurredAt: h.now(),
  })));
  const newer = [];
  assert.ok((await g.followChanges(c, cursor, (ch) => newer.push(ch))) >= 1);
  assert.deepEqual([...new Set(newer.map((ch) => ch.leadId))], ["node-2"]);
  // The same feed over HTTP/JSON, from a copy of the cursor before node-2.
  const httpCursor = path.join(work, "changes-http.cursor");
  fs.writeFileSync(httpCursor, seenCursor);
  const overHttp = [];
  assert.ok((await h.followChanges(base, httpCursor, (ch) => overHttp.push(ch))) >= 1);
  assert.deepEqual([...new Set(overHttp.map((ch) => ch.leadId))], ["node-2"]);
  assert.equal(await h.followChanges(base, httpCursor, (ch) => overHttp.push(ch)), 0);

  // HTTP/JSON: the same score as gRPC, errors with their code and details.
  const httpScores = await h.scoreLeads(base, ["node-1"]);
  assert.equal(httpScores["node-1"].total, scores["node-1"].total);
  await assert.rejects(
    h.recordSignals(base, [{ eventId: "x", leadId: "x", type: "tiktok_like", occurredAt: h.now() }]),
    (error) => {
      assert.equal(error.status, 400);
      assert.equal(error.code, "invalid_argument");
      assert.equal(error.details[0].debug.fieldViolations[0].field, "signals[0].type");
      return true;
    },
  );

  // Retries: a service that is not there is UNAVAILABLE, tried `attempts`
  // times.
  const closed = `127.0.0.1:${await freePort()}`;
  const nowhere = g.clients(closed);
  let tries = 0;
  const counting = new Proxy(nowhere.scoring, {
    get: (target, name) => (name === "ScoreLead" ? (...args) => { tries++; return target.ScoreLead(...args); } : target[name]),
  });
  await assert.rejects(
    g.withRetries(counting, "ScoreLead", { leadId: "x" }, { attempts: 3, baseMs: 10, timeoutMs: 1000 }),
    (error) => error.code === g.grpc.status.UNAVAILABLE,
  );
  assert.equal(tries, 3);
  await assert.rejects(h.call(`http://${closed}`, "LeadScoring/ScoreLead", { leadId: "x" }, { attempts: 2 }), TypeError);
  // Retries over HTTP: 503 and 429 are tried again, then the answer is
  // taken; a 400 is not retried. A stand-in server answers as told.
  const http = require("node:http");
  const script = [];
  const asked = [];
  const standIn = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      asked.push(req.url);
      const [status, body] = script.shift();
      res.writeHead(status, { "Content-Type": "application/json" }).end(JSON.stringify(body));
    });
  });
  await new Promise((r) => standIn.listen(0, "127.0.0.1", r));
  const fake = `http://127.0.0.1:${standIn.address().port}`;
  script.push([503, { code: "unavailable" }], [429, { code: "resource_exhausted" }], [200, { score: { total: 1 } }]);
  assert.deepEqual(await h.call(fake, "LeadScoring/ScoreLead", { leadId: "x" }), { score: { total: 1 } });
  assert.deepEqual(asked, Array(3).fill("/leadscore.v1.LeadScoring/ScoreLead"));
  script.length = 0;
  script.push([400, { code: "invalid_argument", message: "no" }], [200, {}]);
  await assert.rejects(h.call(fake, "LeadScoring/ScoreLead", { leadId: "x" }), (error) => {
    assert.equal(error.code, "invalid_argument");
    assert.equal(asked.length, 4, "not retried");
    return true;
  });
  standIn.close();
  for (const client of Object.values(c)) client.close();
  for (const client of Object.values(nowhere)) client.close();
  console.log("node clients: passed");
}

main().then(
  () => process.exit(0),
  (error) => {
    console.error(error);
    process.exit(1);
  },
);
