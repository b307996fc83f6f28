// The leadscore dashboard: plain JavaScript over the service's own HTTP/JSON
// API (the Connect protocol, same port, same tokens). No build step, no
// dependencies; charts are SVG drawn here. Every node is built with the DOM
// API (never innerHTML), so nothing a lead or campaign is named can run.
"use strict";

const TOKEN_KEY = "leadscore.token";
const DAY = 86400000;

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

class CallError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

async function call(method, body) {
  const headers = { "Content-Type": "application/json" };
  if (token()) headers.Authorization = "Bearer " + token();
  const res = await fetch("/leadscore.v1." + method, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const text = await res.text();
  let json = {};
  try {
    json = text ? JSON.parse(text) : {};
  } catch (_) {
    json = { message: text };
  }
  if (!res.ok) throw new CallError(json.code || String(res.status), json.message || res.statusText);
  return json;
}

function el(tag, attrs, ...children) {
  const svg = ["svg", "rect", "text", "line", "polyline", "title", "g", "circle"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const num = (v, digits = 0) =>
  Number(v || 0).toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
const pct = (v) => (v === undefined || v === null ? "—" : (100 * v).toFixed(1) + "%");
const stage = (s) => String(s || "STAGE_UNSPECIFIED").replace("STAGE_", "");
const seconds = (d) => (d ? parseFloat(d) : 0);
function duration(d) {
  let s = Math.round(seconds(d));
  const sign = s < 0 ? "-" : "";
  s = Math.abs(s);
  const days = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (days) return `${sign}${days}d ${h}h`;
  if (h) return `${sign}${h}h ${m}m`;
  return `${sign}${m}m ${s % 60}s`;
}
const when = (t) => (t ? new Date(t).toISOString().replace("T", " ").slice(0, 16) + " UTC" : "—");
function midnight(daysAgo) {
  const d = new Date();
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()) - daysAgo * DAY).toISOString();
}

function figure(label, value, test) {
  return el("div", { class: "figure" }, el("b", { "data-test": test }, value), el("span", {}, label));
}

function table(headers, rows, attrs) {
  return el(
    "table",
    attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows),
  );
}

/// A horizontal bar chart: one bar per item, labelled.
function bars(title, items, format) {
  const rowH = 24, labelW = 170, width = 720, valueW = 90;
  const max = Math.max(1e-9, ...items.map((i) => Math.abs(i.value)));
  const h = rowH * items.length + 8;
  return el(
    "svg",
    { viewBox: `0 0 ${width} ${h}`, width: "100%", role: "img", "aria-label": title },
    el("title", {}, title),
    items.map((item, i) => {
      const w = (Math.abs(item.value) / max) * (width - labelW - valueW);
      const y = 4 + i * rowH;
      return el(
        "g",
        {},
        el("text", { x: labelW - 8, y: y + 16, "text-anchor": "end" }, item.label),
        el("rect", { class: "bar", x: labelW, y: y + 3, width: Math.max(1, w), height: rowH - 8 }),
        el("text", { x: labelW + w + 6, y: y + 16 }, (format || num)(item.value)),
      );
    }),
  );
}

/// A line chart of (time, value) points.
function line(title, points) {
  const width = 720, height = 200, pad = 36;
  if (points.length === 0) return el("p", { class: "muted" }, "No history yet.");
  const xs = points.map((p) => p.t), ys = points.map((p) => p.v);
  const [x0, x1] = [Math.min(...xs), Math.max(...xs) || 1];
  const [y0, y1] = [Math.min(0, ...ys), Math.max(1, ...ys)];
  const sx = (x) => pad + ((x - x0) / Math.max(1, x1 - x0)) * (width - 2 * pad);
  const sy = (y) => height - pad - ((y - y0) / Math.max(1e-9, y1 - y0)) * (height - 2 * pad);
  return el(
    "svg",
    { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": title },
    el("title", {}, title),
    el("line", { class: "axis", x1: pad, y1: height - pad, x2: width - pad, y2: height - pad }),
    el("line", { class: "axis", x1: pad, y1: pad, x2: pad, y2: height - pad }),
    el("text", { x: 4, y: sy(y1) + 4 }, num(y1)),
    el("text", { x: 4, y: sy(y0) + 4 }, num(y0)),
    el("polyline", { class: "line", points: points.map((p) => `${sx(p.t)},${sy(p.v)}`).join(" ") }),
    points.map((p) => el("circle", { cx: sx(p.t), cy: sy(p.v), r: 3, fill: "#0b5cad" })),
  );
}

// ---- pages -----------------------------------------------------------------

const pages = {
  async funnel(params) {
    const days = Number(params.get("days") || 30);
    const groupBy = params.get("by") || "source";
    const f = await call("Profiles/GetFunnel", {
      from: midnight(days - 1),
      to: midnight(-1),
      groupBy: "FUNNEL_GROUP_BY_" + groupBy.toUpperCase(),
    });
    const total = f.total || {};
    const stages = total.stages || [];
    const of = (name) => stages.find((s) => stage(s.stage) === name) || {};
    const controls = el(
      "form",
      { class: "inline", on: { change: (e) => go(`#funnel?days=${e.currentTarget.days.value}&by=${e.currentTarget.by.value}`) } },
      el("div", {}, el("label", { for: "days" }, "Period"),
        el("select", { id: "days", name: "days" }, [7, 30, 90].map((d) => el("option", { value: d, selected: d === days }, `last ${d} days`)))),
      el("div", {}, el("label", { for: "by" }, "Split by first touch"),
        el("select", { id: "by", name: "by" }, ["source", "channel", "campaign"].map((g) => el("option", { value: g, selected: g === groupBy }, g)))),
    );
    const groups = (f.groups || []).map((g) => {
      const s = (n) => ((g.funnel || {}).stages || []).find((x) => stage(x.stage) === n) || {};
      const leads = Number(s("LEAD").reached || 0), mqls = Number(s("MQL").reached || 0);
      return el("tr", {}, el("td", {}, g.value), el("td", {}, num(leads)), el("td", {}, num(mqls)),
        el("td", {}, num(s("SQL").reached)), el("td", {}, num(s("CUSTOMER").reached)),
        el("td", {}, leads ? pct(mqls / leads) : "—"), el("td", {}, num((g.funnel || {}).wonRevenue, 2)));
    });
    return [
      el("h2", {}, `Funnel, last ${days} days (UTC)`),
      controls,
      el("div", { class: "figures" },
        figure("leads", num(of("LEAD").reached), "funnel-leads"),
        figure("MQLs", num(of("MQL").reached), "funnel-mqls"),
        figure("customers", num(of("CUSTOMER").reached), "funnel-customers"),
        figure("won revenue", num(total.wonRevenue, 2), "funnel-revenue"),
        figure("follow-up in time", pct(total.slaAttainment), "funnel-sla")),
      bars("Leads entering each stage", stages.map((s) => ({ label: stage(s.stage), value: Number(s.entered || 0) }))),
      table(["stage", "entered", "reached", "median time from creation"],
        stages.map((s) => el("tr", { "data-stage": stage(s.stage) }, el("td", {}, stage(s.stage)),
          el("td", { "data-test": "entered" }, num(s.entered)), el("td", { "data-test": "reached" }, num(s.reached)),
          el("td", {}, duration(s.medianTimeToStage))))),
      el("h3", {}, "Conversion"),
      table(["from", "to", "rate"], (total.conversions || []).map((c) =>
        el("tr", {}, el("td", {}, stage(c.from)), el("td", {}, stage(c.to)), el("td", {}, pct(c.rate))))),
      el("h3", {}, `By first-touch ${groupBy}`),
      table([groupBy, "leads", "MQLs", "SQLs", "customers", "lead → MQL", "won revenue"], groups, { "data-test": "groups" }),
    ];
  },

  async cohort(params) {
    const now = new Date();
    const month = params.get("month") || `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}`;
    const [y, m] = month.split("-").map(Number);
    const from = new Date(Date.UTC(y, m - 1, 1)).toISOString(), to = new Date(Date.UTC(y, m, 1)).toISOString();
    const c = await call("Profiles/GetCohortScoreProfile", { createdFrom: from, createdTo: to });
    return [
      el("h2", {}, `Leads created in ${month}`),
      el("form", { class: "inline", on: { change: (e) => go(`#cohort?month=${e.currentTarget.month.value}`) } },
        el("div", {}, el("label", { for: "month" }, "Month"), el("input", { id: "month", name: "month", type: "month", value: month }))),
      el("div", { class: "figures" },
        figure("leads", num(c.leadCount), "cohort-leads"),
        figure("MQL rate", pct(c.mqlRate), "cohort-mql-rate"),
        figure("median score", num(c.p50), "cohort-p50"),
        figure("p90", num(c.p90)), figure("p99", num(c.p99))),
      bars(`Score histogram (${c.model || "primary model"})`,
        (c.histogram || []).map((b) => ({ label: `${num(b.lower)} .. ${num(b.upper)}`, value: Number(b.count || 0) }))),
      table(["stage now", "leads"], (c.countByStage || []).map((s) =>
        el("tr", {}, el("td", {}, stage(s.stage)), el("td", {}, num(s.count))))),
    ];
  },

  async campaigns(params) {
    const model = params.get("model") || "first_touch";
    const r = await call("Profiles/GetCampaignReport", {
      from: midnight(29), to: midnight(-1), model: "ATTRIBUTION_MODEL_" + model.toUpperCase(),
    });
    const models = ["first_touch", "last_touch", "linear", "time_decay", "position_based"];
    const money = (v) => (v === undefined || v === null ? "—" : num(v, 2));
    const rows = r.rows || [];
    return [
      el("h2", {}, `Cost per MQL and attribution, last 30 days (${r.currency || ""})`),
      el("form", { class: "inline", on: { change: (e) => go(`#campaigns?model=${e.currentTarget.model.value}`) } },
        el("div", {}, el("label", { for: "model" }, "Attribution model"),
          el("select", { id: "model", name: "model" }, models.map((m) => el("option", { value: m, selected: m === model }, m.replace("_", " ")))))),
      rows.length ? bars("Cost per MQL by campaign", rows.filter((x) => x.costPerMql !== undefined)
        .map((x) => ({ label: x.value, value: Number(x.costPerMql) })), (v) => num(v, 2)) : el("p", { class: "muted" }, "No spend or leads in the period."),
      table(["campaign", "spend", "leads", "MQLs", "SQLs", "customers", "won revenue", "cost per MQL", "ROI"],
        rows.concat(r.total ? [Object.assign({}, r.total, { value: "total" })] : []).map((x) => el("tr", {},
          el("td", {}, x.value), el("td", {}, money(x.spend)), el("td", {}, num(x.leads, 2)), el("td", {}, num(x.mqls, 2)),
          el("td", {}, num(x.sqls, 2)), el("td", {}, num(x.customers, 2)), el("td", {}, money(x.wonRevenue)),
          el("td", {}, money(x.costPerMql)), el("td", {}, x.roi === undefined ? "—" : pct(x.roi))))),
    ];
  },

  async desk() {
    const d = await call("Profiles/ListHandovers", { limit: 100 });
    return [
      el("h2", {}, "MQLs waiting for sales"),
      el("div", { class: "figures" }, figure("waiting", num(d.waiting), "desk-waiting"),
        figure("agreement", d.agreement || "none")),
      table(["lead", "waiting", "deadline", "state", "owner", "score", "source"], (d.handovers || []).map((h) =>
        el("tr", {}, el("td", {}, el("a", { href: `#lead/${encodeURIComponent(h.leadId)}` }, h.leadId)),
          el("td", {}, duration(h.age)), el("td", {}, when(h.due)),
          el("td", {}, h.overdue ? el("span", { class: "bad" }, "overdue") : el("span", { class: "good" }, "in time")),
          el("td", {}, h.owner || "—"), el("td", {}, num((h.score || {}).total, 1)), el("td", {}, h.source || "—")))),
    ];
  },

  async lead(params, id) {
    const form = el("form", { class: "inline", on: { submit: (e) => { e.preventDefault(); go(`#lead/${encodeURIComponent(e.currentTarget.lead.value.trim())}`); } } },
      el("div", {}, el("label", { for: "lead" }, "Lead id"), el("input", { id: "lead", name: "lead", value: id || "", required: true })),
      el("button", { type: "submit" }, "Show"));
    if (!id) return [el("h2", {}, "A lead's story"), form];
    const p = await call("Profiles/GetScoreProfile", { leadId: id, historyLimit: 50, signalLimit: 20 });
    const s = p.score || {};
    const contributions = (s.contributions || []).map((c) => el("tr", {},
      el("td", {}, c.signal ? `signal ${c.signal.type} (${num(c.signal.counted)} counted)` : `fit ${c.fitRule.ruleId} (${c.fitRule.attribute})`),
      el("td", {}, num(c.points, 2))));
    const history = (p.scoreHistory || []).slice().reverse().map((h) => ({ t: Date.parse(h.at), v: Number(h.total || 0) }));
    const out = [
      el("h2", {}, `Lead ${id}`),
      form,
      el("div", { class: "figures" },
        figure("score", num(s.total, 2), "lead-total"), figure("behaviour", num(s.behavior, 2), "lead-behavior"),
        figure("fit", num(s.fit, 2), "lead-fit"), figure("stage", stage(p.stage || s.stage), "lead-stage"),
        figure("grade", String(s.grade || "").replace("GRADE_", ""))),
      el("h3", {}, "Why this score"),
      table(["contribution", "points"], contributions),
      el("h3", {}, "Score history"),
      line(`Score history of ${id}`, history),
      el("h3", {}, "Stage history"),
      table(["when", "from", "to", "by", "reason"], (p.stageHistory || []).map((c) => el("tr", {},
        el("td", {}, when(c.at)), el("td", {}, stage(c.from)), el("td", {}, stage(c.to)),
        el("td", {}, c.ruleId || c.actor || "—"), el("td", {}, c.reason || "")))),
      el("h3", {}, "Recent signals"),
      table(["occurred", "type", "properties"], (p.recentSignals || []).map((sig) => el("tr", {},
        el("td", {}, when(sig.occurredAt)), el("td", {}, sig.type),
        el("td", {}, Object.entries(sig.properties || {}).map(([k, v]) => `${k}=${v}`).join(", "))))),
    ];
    return out;
  },

  async feed() {
    const start = await call("Qualification/ListQualificationChanges", { afterCursor: "latest", limit: 1 });
    const body = el("tbody", {});
    const rows = el("table", { "data-test": "feed" },
      el("thead", {}, el("tr", {}, ["when", "lead", "from", "to", "by"].map((h) => el("th", { scope: "col" }, h)))), body);
    const status = el("p", { class: "muted" }, "Waiting for qualification changes (those made from now on)…");
    let cursor = start.nextCursor;
    const poll = async () => {
      if (!document.body.contains(rows)) return;
      try {
        const page = await call("Qualification/ListQualificationChanges", { afterCursor: cursor, limit: 100 });
        cursor = page.nextCursor;
        for (const c of page.changes || []) {
          status.textContent = "";
          const ch = c.change || {};
          body.prepend(c.erased
            ? el("tr", {}, el("td", {}, when(c.erased.erasedAt)), el("td", {}, "(erased)"), el("td", {}, ""), el("td", {}, ""), el("td", {}, ""))
            : el("tr", {}, el("td", {}, when(ch.at)),
              el("td", {}, el("a", { href: `#lead/${encodeURIComponent(c.leadId || c.visitorId)}` }, c.leadId || c.visitorId)),
              el("td", {}, stage(ch.from)), el("td", {}, stage(ch.to)), el("td", {}, ch.ruleId || ch.actor || "")));
        }
      } catch (e) {
        status.textContent = e.message;
      }
      setTimeout(poll, 2000);
    };
    setTimeout(poll, 0);
    return [el("h2", {}, "Live qualification changes"), status, rows];
  },

  async delivery() {
    const out = [el("h2", {}, "Trigger and webhook delivery")];
    const groups = await call("Nurture/ListTriggerDefinitions", {});
    out.push(el("h3", {}, "Trigger definitions"), table(["trigger", "on", "program"], (groups.definitions || []).map((d) =>
      el("tr", {}, el("td", {}, d.id), el("td", {}, d.on || ""), el("td", {}, d.program || "")))));
    try {
      const w = await call("Nurture/GetWebhookStatus", {});
      out.push(el("h3", {}, "Webhook endpoints"), (w.endpoints || []).length === 0 ? el("p", { class: "muted" }, "No webhook endpoints are configured.") :
        table(["endpoint", "delivered", "failed", "retried", "pending", "dead letters", "oldest pending", "last error"],
          w.endpoints.map((e) => el("tr", {}, el("td", {}, e.endpoint), el("td", {}, num(e.delivered)), el("td", {}, num(e.failed)),
            el("td", {}, num(e.retried)), el("td", {}, num(e.backlog)), el("td", { class: Number(e.deadLetters) ? "bad" : "" }, num(e.deadLetters)),
            el("td", {}, e.oldestPendingAge ? duration(e.oldestPendingAge) : "—"), el("td", {}, e.lastError || "")))));
    } catch (e) {
      out.push(el("p", { class: "muted" }, e.code === "permission_denied" ? "Webhook health needs a token with the admin scope." : e.message));
    }
    return out;
  },
};

// ---- routing and sign-in ------------------------------------------------------

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function showSignIn(message) {
  document.getElementById("page").replaceChildren();
  const form = document.getElementById("sign-in");
  form.hidden = false;
  document.getElementById("sign-in-error").textContent = message || "";
  document.getElementById("token").focus();
}

// Renders can overlap (a sign-in, then a click before its page came back):
// only the newest one is shown.
let rendering = 0;

async function render() {
  const mine = ++rendering;
  const [path, query] = (location.hash.slice(1) || "funnel").split("?");
  const [name, ...rest] = path.split("/");
  const page = pages[name] ? name : "funnel";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === "#" + page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.getElementById("sign-out").hidden = !token();
  const target = document.getElementById("page");
  target.setAttribute("aria-busy", "true");
  try {
    const nodes = await pages[page](new URLSearchParams(query || ""), rest.length ? decodeURIComponent(rest.join("/")) : "");
    if (mine !== rendering) return;
    document.getElementById("sign-in").hidden = true;
    target.replaceChildren(...nodes);
    document.title = `leadscore — ${page}`;
  } catch (e) {
    if (mine !== rendering) return;
    if (e.code === "unauthenticated") {
      showSignIn(token() ? "That token was refused." : "");
    } else {
      target.replaceChildren(el("p", { class: "error", role: "alert" }, `${e.code || "error"}: ${e.message}`));
    }
  } finally {
    if (mine === rendering) target.removeAttribute("aria-busy");
  }
}

document.getElementById("sign-in").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  document.getElementById("token").value = "";
  render();
});
document.getElementById("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  render();
});
window.addEventListener("hashchange", render);
render();
