// The operator console. Reads the same API a script would (/api/v1/admin/*), with the token
// stored by the sign-in page in the montage_admin cookie, sent as Authorization: Bearer.
// Live updates: the queues (and an open job) are polled every INTERVAL seconds.
(() => {
  "use strict";
  const API = "/api/v1/admin";
  const INTERVAL = 2;
  const STREAMS = ["audio_parser", "scene_planner", "reference_generator", "prompt_generator",
    "video_generator", "composer", "results"];
  const $ = (id) => document.getElementById(id);
  const state = { polls: 0, queues: null, dead: [], jobId: null, job: null, errors: 0, lastError: "" };

  function token() {
    const m = document.cookie.match(/(?:^|;\s*)montage_admin=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }
  async function api(method, path, params) {
    const url = new URL(API + path, location.origin);
    for (const [k, v] of Object.entries(params || {})) if (v !== "" && v != null) url.searchParams.set(k, v);
    const r = await fetch(url, { method, headers: { Authorization: `Bearer ${token()}` } });
    const body = await r.json().catch(() => ({}));
    if (r.status === 401 || r.status === 403) { location.replace("/admin/queues"); }
    if (!r.ok) { const e = new Error(body.error || `HTTP ${r.status}`); e.status = r.status; throw e; }
    return body;
  }
  function el(tag, attrs, ...kids) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") n.className = v; else if (k.startsWith("data-")) n.setAttribute(k, v);
      else if (k === "on") for (const [ev, f] of Object.entries(v)) n.addEventListener(ev, f); else n[k] = v;
    }
    for (const k of kids) if (k != null) n.append(k instanceof Node ? k : String(k));
    return n;
  }
  const secs = (v) => (v == null ? "–" : v < 60 ? `${(+v).toFixed(1)} s` : `${(v / 60).toFixed(1)} min`);
  const when = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–");
  const money = (v) => (v == null ? "–" : `$${(+v).toFixed(4)}`);
  function flash(text, bad) { const f = $("flash"); f.textContent = text; f.className = bad ? "flash error" : "flash"; }
  const pill = (s) => el("span", { class: `pill ${s}` }, s);

  // --- tabs ---------------------------------------------------------------------------------
  function show(tab) {
    for (const s of document.querySelectorAll("section.tab")) s.hidden = s.id !== `tab-${tab}`;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.tab === tab);
    document.body.dataset.tab = tab;
    if (tab === "dead") loadDead(); else if (tab === "ragnarok") loadNexus(); else if (tab === "log") loadLog();
    else if (tab === "jobs" && !state.jobId) searchJobs();
  }
  function route() {
    const h = location.hash.slice(1) || "queues";
    if (h.startsWith("job/")) { show("jobs"); openJob(h.slice(4)); } else show(h);
  }
  window.addEventListener("hashchange", route);

  // --- queues -------------------------------------------------------------------------------
  function queueRow(q) {
    const consumers = el("td", {});
    for (const c of q.consumers) {
      const beat = c.heartbeat_age_seconds == null ? "no heartbeat" : `beat ${secs(c.heartbeat_age_seconds)} ago`;
      const idle = c.idle_seconds == null ? "" : `, idle ${secs(c.idle_seconds)}`;
      consumers.append(el("span", { class: `consumer${c.alive === false ? " dead" : ""}`, title: `${c.pending} in flight` },
        `${c.name}: ${beat}${idle}`));
    }
    const td = (k, v, cls) => el("td", { class: `num ${cls || ""}`, "data-k": k }, v);
    return el("tr", { "data-stage": q.name },
      el("td", {}, el("code", {}, q.name)),
      td("waiting", q.waiting, q.waiting > 0 ? "hot" : ""),
      td("oldest_waiting", secs(q.oldest_waiting_seconds)),
      td("pending", q.pending, q.pending > 0 ? "hot" : ""),
      td("oldest_pending", secs(q.oldest_pending_seconds)),
      td("delayed", q.delayed, q.delayed > 0 ? "hot" : ""),
      td("dead_letters", q.dead_letters, q.dead_letters > 0 ? "bad" : ""),
      td("throughput", q.name === "results" ? "–" : (+q.throughput_per_minute).toFixed(2)),
      td("failed", q.name === "results" ? "–" : q.failed, q.failed > 0 ? "bad" : ""),
      td("p95", q.name === "results" ? "–" : secs(q.p95_seconds)),
      consumers);
  }
  async function pollQueues() {
    try {
      const q = await api("GET", "/queues");
      state.queues = q; state.polls += 1;
      const body = $("queues").tBodies[0];
      body.replaceChildren(...q.stages.map(queueRow), queueRow(q.results));
      const dead = q.stages.reduce((n, s) => n + s.dead_letters, q.results.dead_letters);
      $("dead-count").textContent = dead; $("dead-count").classList.toggle("some", dead > 0);
      $("updated").textContent = when(q.generated_at); $("window").textContent = q.window_seconds / 60;
      $("namespace").textContent = `· ${q.namespace}`;
      $("live").className = "live on";
      document.body.dataset.polls = String(state.polls);
    } catch (err) { state.errors += 1; state.lastError = String(err); $("live").className = "live off"; }
  }

  // --- providers (the public health document: what the stage workers announce and recorded) ---
  async function pollProviders() {
    try {
      const r = await fetch("/api/v1/health");
      const body = await r.json();
      state.providers = body.providers || [];
      $("providers").tBodies[0].replaceChildren(...state.providers.map((p) => el("tr", { "data-stage": p.stage },
        el("td", {}, el("code", {}, p.stage)), el("td", {}, p.provider),
        el("td", {}, `${p.configured ? "yes" : "no"}${p.setting ? ` (${p.setting})` : ""}`),
        el("td", {}, pill(p.state)), el("td", {}, when(p.last_success)), el("td", {}, when(p.last_failure)),
        el("td", {}, p.last_error || ""))));
    } catch (err) { state.errors += 1; state.lastError = String(err); }
  }

  // --- dead letters ---------------------------------------------------------------------------
  async function loadDead() {
    const stream = $("dead-stream").value;
    try {
      const body = await api("GET", "/dead-letters", { stream, limit: 200 });
      state.dead = body.dead_letters;
      $("dead").tBodies[0].replaceChildren(...body.dead_letters.map((d) => el("tr", { "data-entry": d.entry_id, "data-job": d.job_id || "" },
        el("td", {}, when(d.dead_at)), el("td", {}, el("code", {}, d.stream)),
        el("td", {}, d.job_id ? el("a", { href: `#job/${d.job_id}` }, d.job_id.slice(0, 8)) : "–"),
        el("td", {}, d.job_status ? pill(d.job_status) : "–"),
        el("td", {}, el("code", {}, d.code), " ", d.error),
        el("td", { class: "num" }, d.attempts),
        el("td", {}, el("details", {}, el("summary", {}, `${d.history.length} lines`), el("ol", {}, ...d.history.map((h) => el("li", {}, h))))),
        el("td", {}, el("button", { class: "retry", on: { click: () => retry(d) } }, "Retry"), " ",
          el("button", { class: "delete danger", on: { click: () => remove(d) } }, "Delete")))));
      document.body.dataset.deadLoaded = String(Date.now());
    } catch (err) { flash(`Dead letters: ${err.message}`, true); }
  }
  async function retry(d) {
    try {
      const r = await api("POST", `/dead-letters/${d.stream}/${d.entry_id}/retry`);
      flash(`Retried ${d.stream} ${d.entry_id}: ${r.outcome}${r.job_status ? `, job ${r.job_status}` : ""}`);
    } catch (err) { flash(`Retry refused: ${err.message}`, true); }
    loadDead(); pollQueues();
  }
  async function remove(d) {
    if (!window.montageAdmin.noConfirm && !confirm(`Delete dead letter ${d.entry_id}?`)) return;
    try { await api("DELETE", `/dead-letters/${d.stream}/${d.entry_id}`); flash(`Deleted ${d.entry_id}`); }
    catch (err) { flash(`Delete: ${err.message}`, true); }
    loadDead(); pollQueues();
  }
  $("dead-stream").append(...STREAMS.map((s) => el("option", { value: s }, s)));
  $("dead-stream").addEventListener("change", loadDead);
  $("retry-all-btn").addEventListener("click", async () => {
    const stream = $("dead-stream").value;
    if (!stream) return flash("Choose a stream first.", true);
    try {
      const r = await api("POST", `/dead-letters/${stream}/retry-all`);
      flash(`${stream}: ${r.retried} retried, ${r.skipped} skipped`);
    } catch (err) { flash(`Retry all: ${err.message}`, true); }
    loadDead(); pollQueues();
  });

  // --- jobs -----------------------------------------------------------------------------------
  async function searchJobs(ev) {
    if (ev) ev.preventDefault();
    try {
      const body = await api("GET", "/jobs", { q: $("job-q").value.trim(), status: $("job-status").value, limit: 50 });
      $("jobs").tBodies[0].replaceChildren(...body.jobs.map((j) => el("tr", { class: "clickable", "data-job": j.job_id,
        on: { click: () => { location.hash = `job/${j.job_id}`; } } },
        el("td", {}, when(j.created_at)), el("td", {}, el("code", {}, j.job_id)), el("td", {}, j.user_id),
        el("td", {}, pill(j.status)), el("td", {}, j.current_stage || "–"), el("td", { class: "num" }, `${j.progress}%`),
        el("td", { class: "num" }, money(j.total_cost)))));
      document.body.dataset.jobsFound = String(body.total);
    } catch (err) { flash(`Search: ${err.message}`, true); }
  }
  $("job-search").addEventListener("submit", searchJobs);
  async function openJob(id) {
    state.jobId = id;
    try { renderJob(await api("GET", `/jobs/${id}`)); } catch (err) { flash(`Job: ${err.message}`, true); }
  }
  function renderJob(d) {
    state.job = d; const j = d.job;
    $("job").hidden = false; $("job-id").textContent = j.job_id;
    $("job-status-pill").className = `pill ${j.status}`; $("job-status-pill").textContent = j.status;
    $("cancel-btn").hidden = !d.cancellable;
    const facts = [["user", j.user_id], ["stage", j.current_stage], ["progress", `${j.progress}%`],
      ["cost", `${money(j.total_cost)} of ${money(j.cost_limit)} (estimate ${money(j.estimated_cost)})`],
      ["created", j.created_at], ["started", j.started_at], ["completed", j.completed_at], ["deadline", j.deadline_at],
      ["audio", `${j.audio_filename} (${(+j.audio_duration).toFixed(1)} s)`], ["prompt", j.user_prompt],
      ["error", j.error_message ? `${j.error_code}: ${j.error_message}` : "–"]];
    $("job-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v || "–")]));
    $("job-stages").tBodies[0].replaceChildren(...d.stages.map((s) => el("tr", { "data-stage": s.stage, "data-state": s.status },
      el("td", {}, el("code", {}, s.stage)), el("td", {}, pill(s.status)), el("td", { class: "num" }, s.dispatch),
      el("td", { class: "num" }, s.attempts), el("td", {}, when(s.started_at)), el("td", { class: "num" }, secs(s.duration_seconds)),
      el("td", {}, s.error || ""))));
    $("job-errors").replaceChildren(...(d.errors.length ? d.errors.map((e) => el("li", {}, `${e.where}: ${e.code ? e.code + ": " : ""}${e.message}`)) : [el("li", {}, "none")]));
    $("job-dead").replaceChildren(...(d.dead_letters.length ? d.dead_letters.map((x) => el("li", {}, `${x.stream} ${x.entry_id}: ${x.code} ${x.error} `,
      el("button", { class: "retry", on: { click: () => retry(x).then(() => openJob(j.job_id)) } }, "Retry"))) : [el("li", {}, "none")]));
    $("job-costs").tBodies[0].replaceChildren(...d.costs.map((c) => el("tr", {}, el("td", {}, c.stage), el("td", {}, c.api_name),
      el("td", {}, el("code", {}, c.call_id)), el("td", { class: "num" }, money(c.cost)), el("td", {}, when(c.created_at)))));
    $("job-events").replaceChildren(...d.events.map((e) => el("li", {}, `${when(e.at)} ${e.event} ${JSON.stringify(e.data)}`)));
    $("job-files").replaceChildren(...(d.files.length ? d.files.map((f) => el("li", {}, el("code", {}, f.key), ` ${f.size} bytes`)) : [el("li", {}, "none")]));
    const hooks = d.webhooks || [];
    $("job-webhooks").tBodies[0].replaceChildren(...(hooks.length ? hooks.map((w) => el("tr", { "data-webhook": w.webhook_id, "data-state": w.state },
      el("td", {}, el("code", {}, w.webhook_id)), el("td", {}, w.event_type), el("td", {}, pill(w.state)),
      el("td", { class: "num" }, w.attempts), el("td", { class: "num" }, w.last_status ?? "–"), el("td", {}, w.last_error || ""),
      el("td", {}, when(w.next_attempt_at)),
      el("td", {}, el("button", { class: "resend", on: { click: () => resend(w.webhook_id).then(() => openJob(j.job_id)) } }, "Resend"))))
      : [el("tr", {}, el("td", { colSpan: 8 }, "none"))]));
    $("job-actions").replaceChildren(...(d.actions.length ? d.actions.map((a) => el("li", {}, `${when(a.created_at)} ${a.actor} ${a.action} ${a.outcome}`)) : [el("li", {}, "none")]));
    document.body.dataset.jobStatus = j.status;
  }
  async function resend(id) {
    try { await api("POST", `/webhooks/${id}/resend`); flash(`Webhook ${id} queued again`); }
    catch (err) { flash(`Resend: ${err.message}`, true); }
  }
  $("delete-btn").addEventListener("click", async () => {
    if (!state.jobId) return;
    if (!window.montageAdmin.noConfirm && !confirm(`Delete job ${state.jobId}, its files and records?`)) return;
    try {
      const r = await api("DELETE", `/jobs/${state.jobId}`);
      flash(`Job ${r.outcome.replace("_", " ")} (${r.files_deleted} files)`);
      state.jobId = null; $("job").hidden = true; location.hash = "jobs";
    } catch (err) { flash(`Delete: ${err.message}`, true); }
  });
  $("cancel-btn").addEventListener("click", async () => {
    if (!state.jobId) return;
    if (!window.montageAdmin.noConfirm && !confirm(`Cancel job ${state.jobId}?`)) return;
    try { await api("POST", `/jobs/${state.jobId}/cancel`); flash("Job cancelled"); } catch (err) { flash(`Cancel: ${err.message}`, true); }
    openJob(state.jobId);
  });

  // --- RAGNAROK and the log ------------------------------------------------------------------
  async function loadNexus() {
    try {
      const b = await api("GET", "/ragnarok/jobs", { limit: 100 });
      $("nexus-counts").textContent = Object.entries(b.counts).map(([k, v]) => `${k} ${v}`).join(" · ");
      $("nexus").tBodies[0].replaceChildren(...b.jobs.map((j) => el("tr", { "data-job": j.job_id },
        el("td", {}, when(j.created_at)), el("td", {}, el("code", {}, j.job_id)), el("td", {}, el("code", {}, j.workflow_id)),
        el("td", {}, pill(j.status)), el("td", {}, el("code", {}, j.trace_id)), el("td", {}, j.user_id),
        el("td", {}, j.business_name), el("td", { class: "num" }, j.poll_attempts), el("td", {}, j.error || ""))));
    } catch (err) { flash(`RAGNAROK: ${err.message}`, true); }
  }
  async function loadLog() {
    try {
      const b = await api("GET", "/actions", { limit: 200 });
      $("actions").tBodies[0].replaceChildren(...b.actions.map((a) => el("tr", {},
        el("td", {}, when(a.created_at)), el("td", {}, a.actor), el("td", {}, a.action), el("td", {}, el("code", {}, a.target)),
        el("td", {}, pill(a.outcome)), el("td", {}, el("code", {}, JSON.stringify(a.detail))))));
    } catch (err) { flash(`Log: ${err.message}`, true); }
  }

  // --- start ----------------------------------------------------------------------------------
  $("signout-btn").addEventListener("click", () => {
    document.cookie = "montage_admin=; Path=/admin; SameSite=Strict; Max-Age=0";
    location.replace("/admin/queues");
  });
  $("interval").textContent = INTERVAL;
  window.montageAdmin = { state, pollQueues, pollProviders, loadDead, openJob, searchJobs, noConfirm: false };
  api("GET", "/me").then((me) => { $("who").textContent = me.user_id; }).catch(() => {});
  route();
  pollQueues(); pollProviders();
  setInterval(() => {
    pollQueues();
    if (document.body.dataset.tab === "queues" && state.polls % 5 === 0) pollProviders();
    if (document.body.dataset.tab === "dead") loadDead();
    if (document.body.dataset.tab === "jobs" && state.jobId) openJob(state.jobId);
  }, INTERVAL * 1000);
  document.body.dataset.ready = "1";
})();
