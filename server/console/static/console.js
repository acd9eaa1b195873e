// The fedge console page: one client of the console's JSON API (/api/openapi.json).
// No inline script (the Content-Security-Policy forbids it), no HTML built from data: every
// value is set with textContent. Views re-fetch when the event stream names them.
"use strict";

const state = { csrf: null, view: "overview", arg: null, source: null, renders: 0 };

// -- helpers ------------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toFixed(digits);
  return String(value);
}

// An ISO time as "2025-01-02 03:04:05 UTC" (the full value in its tooltip).
function when(iso) {
  if (!iso) return "–";
  const utc = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(?:Z|\+00:00)$/.exec(iso);
  return el("time", { datetime: iso, title: iso }, utc ? `${utc[1]} ${utc[2]} UTC` : iso);
}

function ago(iso) {
  if (!iso) return "–";
  const seconds = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
  return `${seconds} s ago`;
}

// JSON with whole numbers beyond 2^53 (SuperLink node ids are 64-bit) kept exact, as their
// digits: a plain JSON.parse would round them and show another node's id.
function parseJson(text) {
  try {
    return JSON.parse(text, (_key, value, context) =>
      typeof value === "number" && !Number.isSafeInteger(value) && Number.isInteger(value) && context?.source ? context.source : value);
  } catch {
    return {};
  }
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.body !== undefined) {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = state.csrf || "";
  }
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "same-origin",
  });
  if (response.status === 401) {
    window.location.assign("/login");
    throw new Error("not logged in");
  }
  const body = parseJson(await response.text());
  if (!response.ok) throw new Error(body.error || body.detail || `HTTP ${response.status}`);
  return body;
}

// A table of rows; `id` names it (the page's tests find it by id), `key(row)` marks each row.
// A column is [title, cell(row)] or [title, cell(row), "long"] for values that may break anywhere.
function table(columns, rows, empty, { id, key } = {}) {
  if (!rows.length) return el("p", { class: "empty", id }, empty);
  return el(
    "table",
    { id },
    el("thead", {}, el("tr", {}, columns.map(([title]) => el("th", {}, title)))),
    el("tbody", {}, rows.map((row) => el("tr", { "data-key": key ? key(row) : null }, columns.map(([, cell, kind]) => el("td", { class: kind }, cell(row)))))),
  );
}

function tile(label, value, note) {
  return el("div", { class: "tile" }, el("span", { class: "label" }, label), el("strong", {}, value), note ? el("small", {}, note) : null);
}

// A line chart of series over x (whole numbers: rounds, or 1..n for `names`); draws into a canvas
// inside `holder`.
function chart(holder, title, x, series, { xLabel = "round", names = null, yLabel = "", width = 520, height = 220 } = {}) {
  const palette = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d"];
  const box = el("figure", { class: "chart", "data-chart": title }, el("figcaption", {}, title));
  holder.append(box);
  if (!x.length) {
    box.append(el("p", { class: "empty" }, "no data yet"));
    return;
  }
  const xAxis = { label: xLabel, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] };
  const xSeries = { label: xLabel };
  if (names) {
    xAxis.values = (_u, ticks) => ticks.map((t) => names[t - 1] ?? "");
    xSeries.value = (_u, v) => (v === null ? "--" : names[v - 1] ?? "");
  }
  const options = {
    width,
    height,
    scales: { x: { time: false } },
    axes: [xAxis, { label: yLabel }],
    series: [xSeries, ...series.map((s, i) => ({ label: s.label, stroke: s.color || palette[i % palette.length], width: 2, dash: s.dash, points: { show: true } }))],
  };
  box.plot = new uPlot(options, [x, ...series.map((s) => s.values)], box); // destroyed with its view
}

function confirmAction(text, fields = []) {
  const dialog = document.getElementById("confirm");
  if (dialog.open) return Promise.resolve(null); // one question at a time
  document.getElementById("confirm-text").textContent = text;
  const holder = document.getElementById("confirm-fields");
  holder.replaceChildren(...fields.map(([name, label, value]) => el("label", {}, label, el("input", { name, value: value || "" }))));
  // By the HTML standard, Escape closes a dialog without setting returnValue: clear the last
  // answer first, so a dismissed question never counts as the previous one's "ok".
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (dialog.returnValue !== "ok") return resolve(null);
        const values = {};
        for (const input of holder.querySelectorAll("input")) values[input.name] = input.value;
        resolve(values);
      },
      { once: true },
    );
  });
}

// Notices live outside the view, which live updates replace: a one-time token or an error
// stays until the operator dismisses it.
function notice(message, kind = "info") {
  const box = el("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" });
  box.append(el("button", { type: "button", class: "dismiss", title: "dismiss", "aria-label": "dismiss", onclick: () => box.remove() }, "×"), message);
  document.getElementById("notices").prepend(box);
  return box;
}

async function act(path, body, done) {
  try {
    const result = await api(path, { method: "POST", body: { ...body, confirm: true } });
    done(result);
  } catch (error) {
    notice(error.message, "error");
  }
}

// -- views --------------------------------------------------------------------------------------

const views = {
  async overview(view) {
    const doc = await api("/api/overview");
    const devices = doc.devices;
    view.append(
      el("h2", {}, "Overview"),
      el(
        "div",
        { class: "tiles" },
        tile("Runs", doc.runs.length, doc.runs.filter((r) => r.state === "running").length + " running"),
        tile("Holders", doc.holders.total, Object.entries(doc.holders.byState).map(([k, v]) => `${v} ${k}`).join(", ")),
        tile("Devices online", `${devices.online}/${devices.total}`, devices.fleet ? `fleet ${devices.fleet}` : "no broker"),
        tile("Healthy replicas", `${doc.replicas.healthy}/${doc.replicas.total}`, `${doc.replicas.versions} version(s)`),
      ),
      el("h3", {}, "Alerts"),
      doc.alerts.length
        ? el("ul", { class: "alerts" }, doc.alerts.map((a) => el("li", { class: a.level }, el("a", { href: `#/${a.view}` }, a.text))))
        : el("p", { class: "empty" }, "no alerts"),
      el("h3", {}, "Runs"),
      runTable(doc.runs),
    );
    const latest = doc.runs[doc.runs.length - 1];
    if (latest) {
      const run = await api(`/api/runs/${encodeURIComponent(latest.name)}`);
      const charts = el("div", { class: "charts" });
      view.append(charts);
      chart(charts, `accuracy: ${latest.name}`, run.rounds.map((r) => r.round), [{ label: "eval accuracy", values: run.rounds.map((r) => r.eval_accuracy) }], { yLabel: "accuracy" });
    }
  },

  async runs(view, name) {
    if (name) return views.run(view, name);
    const doc = await api("/api/runs");
    view.append(el("h2", {}, "Runs"), runTable(doc.items));
  },

  async run(view, name) {
    const doc = await api(`/api/runs/${encodeURIComponent(name)}`);
    const s = doc.summary;
    const rounds = doc.rounds;
    const x = rounds.map((r) => r.round);
    view.append(
      el("h2", {}, `Run ${s.name}`),
      el("p", {}, `state ${s.state}; round ${fmt(s.round)} of ${fmt(s.rounds ?? doc.budget?.rounds)}; `, el("span", { id: "round-count", "data-rounds": rounds.length }, `${rounds.length} round(s) recorded`)),
      el("div", { class: "actions" }, el("button", { type: "button", onclick: () => stopRun(s.name) }, "Stop run")),
    );
    const charts = el("div", { class: "charts" });
    view.append(charts);
    chart(charts, "accuracy", x, [{ label: "eval accuracy", values: rounds.map((r) => r.eval_accuracy) }], { yLabel: "accuracy" });
    chart(charts, "loss", x, [
      { label: "train loss", values: rounds.map((r) => r.train_loss) },
      { label: "eval loss", values: rounds.map((r) => r.eval_loss) },
    ], { yLabel: "loss" });
    const holders = Object.keys(doc.epsilonPerHolder).sort();
    const series = holders.map((h) => ({ label: h, values: rounds.map((r) => (r.epsilon || {})[h] ?? null) }));
    if (doc.budget) series.push({ label: "budget", values: x.map(() => doc.budget.epsilon), color: "#6b7280", dash: [6, 4] });
    if (doc.userEpsilon != null) series.push({ label: "user-level (coordinator)", values: rounds.map((r) => r.user_epsilon ?? null), color: "#b45309" });
    chart(charts, "epsilon per holder", x, series, { yLabel: "epsilon" });
    view.append(
      el("h3", {}, "Rounds"),
      table(
        [
          ["round", (r) => r.round],
          ["status", (r) => r.status],
          ["replied", (r) => (r.clients || []).length],
          ["declined", (r) => Object.entries(r.declined || {}).map(([h, why]) => `${h}: ${why}`).join("; ") || "–"],
          ["failed", (r) => (r.failed || []).join(", ") || "–"],
          ["flagged", (r) => Object.entries(r.flagged || {}).map(([h, why]) => `${h}: ${why}`).join("; ") || "–"],
          ["accuracy", (r) => fmt(r.eval_accuracy)],
          ["train loss", (r) => fmt(r.train_loss)],
          ["sent", (r) => fmt(r.bytes_sent)],
          ["received", (r) => fmt(r.bytes_received)],
          ["seconds", (r) => fmt(r.seconds, 1)],
        ],
        rounds,
        "no round finished yet",
        { id: "rounds", key: (r) => r.round },
      ),
    );
  },

  async holders(view) {
    const [holders, audit, overview] = await Promise.all([api("/api/holders"), api("/api/audit?limit=100"), api("/api/overview")]);
    const spent = overview.holders.epsilonSpent || {};
    view.append(
      el("h2", {}, "Data holders"),
      el("div", { class: "actions" }, el("button", { type: "button", id: "issue-token", onclick: issueToken }, "Issue enrollment token")),
      table(
        [
          ["name", (h) => h.name],
          ["state", (h) => h.state],
          ["node", (h) => fmt(h.nodeId)],
          ["epsilon spent", (h) => fmt(spent[h.name])],
          ["key", (h) => h.fingerprint || "–", "long"],
          ["since", (h) => when(h.updatedAt)],
          ["", (h) => (h.state === "revoked" ? "" : el("button", { type: "button", class: "danger", "data-revoke": h.name, onclick: () => revoke(h.name) }, "Revoke"))],
        ],
        holders.items,
        "no data holder enrolled yet",
        { id: "holders", key: (h) => h.name },
      ),
      el("h3", {}, "Audit log"),
      table(
        [
          ["seq", (e) => e.seq],
          ["at", (e) => when(e.at)],
          ["action", (e) => e.action],
          ["subject", (e) => e.subject],
          ["detail", (e) => e.detail || "–", "long"],
          ["actor", (e) => e.actor],
        ],
        audit.items.slice().reverse(),
        "nothing audited yet",
        { id: "audit", key: (e) => e.seq },
      ),
    );
  },

  async placement(view) {
    const doc = await api("/api/placement");
    view.append(el("h2", {}, "Placement"));
    if (!doc.items.length) view.append(el("p", { class: "empty" }, "no artifact placed yet"));
    for (const v of doc.items) {
      view.append(
        el("h3", {}, `${v.artifact} ${v.version}`),
        el("p", {}, `health ${v.health}; ${v.deployed ? "deployed" : "not deployed"}; ${fmt(v.sizeBytes)} bytes; policy ${v.policy || "–"}`),
        table(
          [
            ["target", (r) => r.target],
            ["provider", (r) => r.provider],
            ["container", (r) => r.container],
            ["state", (r) => r.status],
            ["preferred", (r) => (v.preferred.includes(r.target) ? "yes" : "no")],
            ["updated", (r) => when(r.updated)],
          ],
          v.replicas,
          "no replica",
          { key: (r) => r.target },
        ),
      );
    }
  },

  async fleet(view) {
    const [devices, rollouts] = await Promise.all([api("/api/fleet"), api("/api/rollouts")]);
    view.append(
      el("h2", {}, `Fleet ${devices.fleet || ""}`),
      el("div", { class: "actions" }, el("button", { type: "button", id: "start-rollout", onclick: startRollout }, "Start rollout")),
      table(
        [
          ["device", (d) => d.device],
          ["online", (d) => (d.online ? "yes" : "no")],
          ["desired", (d) => d.desired || "–"],
          ["reported", (d) => d.reported || "–"],
          ["phase", (d) => el("span", { class: "phase", "data-device": d.device }, d.phase || "–")],
          ["p50 ms", (d) => fmt(d.p50Ms, 1)],
          ["p95 ms", (d) => fmt(d.p95Ms, 1)],
          ["errors", (d) => fmt(d.errorRate)],
          ["last seen", (d) => ago(d.lastSeen)],
          ["", (d) => el("button", { type: "button", onclick: () => rollback(d.device) }, "Roll back")],
        ],
        devices.items,
        "no device has reported yet",
        { id: "devices", key: (d) => d.device },
      ),
    );
    const charts = el("div", { class: "charts" });
    view.append(charts);
    const withLatency = devices.items.filter((d) => d.p95Ms !== null);
    chart(charts, "latency by device (ms)", withLatency.map((_, i) => i + 1), [
      { label: "p50", values: withLatency.map((d) => d.p50Ms) },
      { label: "p95", values: withLatency.map((d) => d.p95Ms) },
    ], { xLabel: "device", names: withLatency.map((d) => d.device), yLabel: "ms" });
    view.append(
      el("h3", {}, "Rollouts"),
      table(
        [
          ["deployment", (r) => r.deploymentId],
          ["artifact", (r) => `${r.artifact} ${r.version}`],
          ["stage", (r) => r.stage],
          ["state", (r) => r.stateText],
          ["succeeded", (r) => (r.succeeded || []).length],
        ],
        rollouts.items,
        "no rollout recorded",
        { id: "rollouts", key: (r) => r.deploymentId },
      ),
    );
  },

  async explanations(view) {
    const doc = await api("/api/explanations");
    view.append(
      el("h2", {}, "Explanations"),
      el("p", { class: "empty" }, "Why a device answered the demo's sample inferences: each word shaded by how much the answer's probability dropped when the device hid it (occlusion on its int8 model). Green pushed towards the answer, red against it; hover a word for its value."),
    );
    if (!doc.items.length) {
      view.append(el("p", { class: "empty", id: "explanations" }, "no explanation recorded yet (fedge demo has a device explain its sample inferences)"));
      return;
    }
    view.append(
      el(
        "ul",
        { class: "explanations", id: "explanations" },
        doc.items.map((item, i) =>
          el(
            "li",
            { "data-key": `${item.run}/${i}` },
            el("p", { class: "said" }, shaded(item.text, item.words)),
            el("small", {}, `${item.device}: ${item.label} (${fmt(item.score)}), expected ${item.expected || "–"}; ${fmt(item.ms, 0)} ms; ${item.run === "." ? "this folder" : item.run}`),
          ),
        ),
      ),
    );
  },
};

// A sentence with each word shaded by its attribution (class attr pos|neg l1..l5: the page's
// Content-Security-Policy allows no style attribute). Offsets count code points, as Python does.
function shaded(text, words) {
  const chars = Array.from(text);
  const usable = words
    .filter((w) => Number.isInteger(w.start) && Number.isInteger(w.end) && w.start >= 0 && w.start < w.end && w.end <= chars.length && Number.isFinite(w.attribution))
    .sort((a, b) => a.start - b.start);
  const largest = Math.max(0, ...usable.map((w) => Math.abs(w.attribution)));
  const parts = [];
  let cursor = 0;
  for (const w of usable) {
    if (w.start < cursor) continue;
    parts.push(chars.slice(cursor, w.start).join(""));
    const level = largest > 0 ? Math.max(1, Math.ceil((5 * Math.abs(w.attribution)) / largest)) : 1;
    const sign = w.attribution > 0 ? "+" : "";
    parts.push(el("span", { class: `attr ${w.attribution > 0 ? "pos" : "neg"} l${level}`, title: `${sign}${w.attribution.toFixed(4)}` }, chars.slice(w.start, w.end).join("")));
    cursor = w.end;
  }
  parts.push(chars.slice(cursor).join(""));
  return parts;
}

function runTable(runs) {
  return table(
    [
      ["run", (r) => el("a", { href: `#/runs/${encodeURIComponent(r.name)}` }, r.name === "." ? "(this folder)" : r.name)],
      ["state", (r) => r.state],
      ["round", (r) => `${fmt(r.round)}/${fmt(r.rounds)}`],
      ["clients", (r) => fmt(r.clients)],
      ["accuracy", (r) => fmt(r.accuracy)],
    ],
    runs,
    "no run in this folder yet",
    { id: "runs", key: (r) => r.name },
  );
}

// -- actions ------------------------------------------------------------------------------------

async function issueToken() {
  const values = await confirmAction("Issue a one-time enrollment token? It is shown once.", [["name", "holder name", ""], ["expires", "valid for", "24h"]]);
  if (!values) return;
  await act("/api/actions/token", values, (result) => {
    const box = notice("", "ok");
    box.append(`token for ${result.name} (shown once): `, el("code", { id: "new-token" }, result.token), el("br"), result.command);
  });
}

async function revoke(name) {
  const values = await confirmAction(`Revoke data holder ${name}? Its node is unregistered from the SuperLink at once.`, [["reason", "reason (audit log)", ""]]);
  if (!values) return;
  await act("/api/actions/revoke", { name, reason: values.reason }, () => render());
}

async function stopRun(run) {
  if (!(await confirmAction(`Stop run ${run} on the SuperLink?`))) return;
  await act("/api/actions/stop-run", { run }, () => render());
}

async function rollback(device) {
  if (!(await confirmAction(`Roll ${device} back to its previous version?`))) return;
  await act("/api/actions/rollback", { device }, () => render());
}

async function startRollout() {
  const values = await confirmAction("Start a rollout (paths below the console's folder):", [["artifact", "artifact folder", "artifact"], ["urls", "replica URLs", "urls.json"], ["rollout", "rollout policy", "rollout.yaml"]]);
  if (!values) return;
  await act("/api/actions/rollout", values, (result) => notice(`rollout ${result.deploymentId}: ${result.stage}`, "ok"));
}

// -- routing and live updates -------------------------------------------------------------------

const VIEWS_OF = { overview: ["overview"], runs: ["runs"], holders: ["holders"], placement: ["placement"], fleet: ["fleet", "rollouts"], explanations: ["explanations"] };

// Draws the view the address names. Renders can overlap (a change event while the previous one
// still fetches): only the newest is shown, and each render's charts are destroyed with its view.
async function render() {
  const [, view, ...rest] = (window.location.hash || "#/overview").split("/");
  state.view = views[view] ? view : "overview";
  state.arg = rest.length ? decodeURIComponent(rest.join("/")) : null;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.view === state.view);
  const ticket = ++state.renders;
  const fresh = el("div", { class: `view view-${state.view}` });
  try {
    await views[state.view](fresh, state.arg);
  } catch (error) {
    fresh.append(el("p", { class: "error" }, error.message));
  }
  const holder = document.getElementById("view");
  const stale = ticket !== state.renders ? fresh : holder; // a newer render won: drop this one
  for (const figure of stale.querySelectorAll("figure.chart")) figure.plot?.destroy();
  if (stale === holder) holder.replaceChildren(fresh);
}

function listen() {
  const live = document.getElementById("live");
  const source = new EventSource("/api/events");
  state.source = source;
  let connected = false;
  source.addEventListener("hello", () => {
    live.textContent = "live";
    live.classList.add("on");
    if (connected) render(); // back after a break: whatever changed meanwhile was not announced
    connected = true;
  });
  source.addEventListener("change", (event) => {
    const { views: changed } = JSON.parse(event.data);
    const wanted = VIEWS_OF[state.view] || [];
    if (changed.some((name) => wanted.includes(name))) render();
  });
  source.onerror = () => {
    live.textContent = "reconnecting…";
    live.classList.remove("on");
    api("/api/session").catch(() => {}); // an ended session goes back to the login page
  };
}

async function start() {
  const session = await api("/api/session");
  state.csrf = session.csrf;
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-cancel").addEventListener("click", () => dialog.close("cancel"));
  document.getElementById("logout").addEventListener("click", async () => {
    await api("/api/logout", { method: "POST", body: {} });
    window.location.assign("/login");
  });
  window.addEventListener("hashchange", render);
  await render();
  listen();
}

start();
