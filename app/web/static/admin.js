/* Admin overview: GET /admin/stats every 10 s, CPU and memory history of up to the last hour as inline SVG
   line charts, workers, the system log over a WebSocket, and the server control buttons. The API has
   no history, so the samples are kept in localStorage: the charts survive a reload of the page. */
(function () {
  "use strict";
  const HOUR = 3600 * 1000;
  const STORE = "wt-admin-stats";
  const W = 600, H = 160, PAD = 6;
  let samples = [];
  try { samples = JSON.parse(localStorage.getItem(STORE) || "[]"); } catch (err) { samples = []; }

  function put(name, value) {
    const node = document.querySelector('[data-stat="' + name + '"]');
    if (node) node.textContent = value === null || value === undefined ? "–" : value;
  }

  /* One polyline per run of samples; a gap of more than a minute (page closed) breaks the line. */
  /* The x axis spans the samples kept (at least 5 minutes, at most the hour), so a fresh page shows a line. */
  function span(now) {
    const oldest = samples.length ? samples[0].t : now;
    return Math.min(HOUR, Math.max(5 * 60000, now - oldest));
  }

  function chart(svg, key) {
    const now = Date.now(), range = span(now);
    const x = (t) => ((t - (now - range)) / range * W).toFixed(1);
    const y = (v) => (H - PAD - Math.max(0, Math.min(100, v)) / 100 * (H - 2 * PAD)).toFixed(1);
    let markup = [25, 50, 75].map((v) => '<line class="grid" x1="0" x2="' + W + '" y1="' + y(v) + '" y2="' + y(v) + '"/>').join("");
    let run = [];
    const flush = () => {
      if (!run.length) return;
      const pts = run.map((s) => x(s.t) + "," + y(s[key])).join(" ");
      const first = x(run[0].t), last = x(run[run.length - 1].t);
      markup += '<polygon class="area" points="' + first + "," + (H - PAD) + " " + pts + " " + last + "," + (H - PAD) + '"/>';
      markup += run.length === 1 ? '<circle class="dot" r="3" cx="' + first + '" cy="' + y(run[0][key]) + '"/>'
        : '<polyline class="line" points="' + pts + '"/>';
      run = [];
    };
    samples.forEach((s, i) => {
      if (i && s.t - samples[i - 1].t > 60000) flush();
      run.push(s);
    });
    flush();
    svg.innerHTML = markup; // numbers only; the HTML parser puts these children in the SVG namespace
  }

  function system(stats) {
    const s = stats.system || {}, mem = s.memory || {}, disk = s.disk || {};
    const rows = [
      ["CPU cores", s.cpu_count], ["Load average", (s.load_average || []).join(" · ")],
      ["Memory", mem.used_mb !== undefined ? WT.bytes(mem.used_mb * 1048576) + " of " + WT.bytes(mem.total_mb * 1048576) : null],
      ["Disk", disk.used_gb !== undefined ? disk.used_gb + " GB of " + disk.total_gb + " GB (" + disk.percent + "%)" : null],
      ["Stored files", (stats.storage || {}).total_files + " · " + WT.bytes(["uploads", "transcripts", "logs"]
        .reduce((sum, name) => sum + (((stats.storage_by_folder || {})[name] || {}).bytes || 0), 0))],
      ["Jobs last hour", (stats.performance || {}).throughput_per_hour],
      ["Web server", (stats.processes || {}).web_rss_mb ? (stats.processes.web_rss_mb + " MB") : null],
    ];
    document.getElementById("system-meta").replaceChildren(...rows.filter((r) => r[1] !== null && r[1] !== undefined)
      .flatMap(([k, v]) => [WT.el("dt", {}, k), WT.el("dd", {}, String(v))]));
  }

  /* A worker on another box: drain it (it finishes its job and takes no more) or resume it, by its name. */
  function drainButton(w) {
    const action = w.drained ? "resume" : "drain";
    const button = WT.el("button", { type: "button", class: "small" }, w.drained ? "Resume" : "Drain");
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await WT.api("/admin/workers/" + encodeURIComponent(w.name) + "/" + action, { method: "POST" });
        WT.toast(w.name + (action === "drain" ? " takes no more jobs after its running one." : " takes jobs again."), "ok");
      } catch (err) {
        WT.fail(err);
        button.disabled = false;
      }
    });
    return button;
  }

  function workers(stats) {
    const list = (stats.processes || {}).workers || [];
    const body = document.getElementById("workers-body");
    body.replaceChildren(...list.map((w) => WT.el("tr", {},
      WT.el("td", { "data-label": "Worker" }, (w.name || "") + " · " + String(w.pid) + (w.local === false ? " (" + (w.host || "") + ")" : "")),
      WT.el("td", { "data-label": "Memory" }, w.rss_mb ? w.rss_mb + " MB" : "–"),
      WT.el("td", { "data-label": "Uptime" }, WT.clock(w.uptime_seconds)),
      WT.el("td", { "data-label": "Job" }, w.job_id ? WT.el("a", { href: "/ui/jobs/" + w.job_id }, w.job_id.slice(0, 8)) : "idle"),
      WT.el("td", { "data-label": "Model" }, w.model ? w.model + (w.engine ? " · " + w.engine.split(":")[0] : "") : "–"),
      WT.el("td", { "data-label": "Heartbeat" }, w.last_heartbeat ? w.last_heartbeat.slice(11, 19) : "–"),
      WT.el("td", {}, w.local === false ? drainButton(w) : ""))));
    if (!list.length) body.appendChild(WT.el("tr", {}, WT.el("td", { colspan: 7, class: "muted" }, "No worker is running.")));
    document.getElementById("queue-line").textContent = "Jobs waiting in the queue: " + (stats.queue_depth || 0);
  }

  /* WT_ENGINE, the default model's engine for short and long audio, and the calibration's figures. */
  function engine(stats) {
    const e = stats.engine || {}, choice = e.choice || {}, cal = e.calibration;
    document.getElementById("engine-setting").textContent = "WT_ENGINE=" + (e.setting || "auto");
    document.getElementById("engine-choice").textContent = e.default_model
      ? e.default_model + ": short audio on " + (choice.short || "–") + ", long audio on " + (choice.long || "–")
      : "";
    const results = ((cal && cal.models && cal.models[e.default_model]) || {}).results || {};
    const cell = (r) => (r ? r.seconds.toFixed(2) + " s · WER " + (100 * r.wer).toFixed(1) + " %" : "–");
    const body = document.querySelector("#engine-results tbody");
    body.replaceChildren(...Object.entries(results).map(([label, r]) => WT.el("tr", {},
      WT.el("td", { "data-label": "Engine" }, label), WT.el("td", { "data-label": "Short" }, cell(r.short)),
      WT.el("td", { "data-label": "Long" }, cell(r.long)))));
    if (!cal) body.appendChild(WT.el("tr", {}, WT.el("td", { colspan: 3, class: "muted" },
      "Not calibrated yet: run whisper-transcriber tune (the first start does it in the background).")));
    document.getElementById("engine-cpu").textContent = cal
      ? "Measured " + cal.created_at + " on " + cal.cpu.machine + " (" + cal.cpu.flags.join(" ") + ")" : "";
    const layout = cal && cal.layout;
    document.getElementById("engine-layout").textContent = layout
      ? "Deep queue (" + layout.jobs + " jobs, workers × threads): " + Object.entries(layout.seconds)
        .map(([k, v]) => k + " " + v.toFixed(1) + " s").join(", ") + "; WT_WORKERS=0 runs " + layout.workers
        + " worker(s) × " + layout.threads + " thread(s)" : "";
  }

  let failing = false;
  async function sample() {
    let stats;
    try {
      stats = await WT.api("/admin/stats");
      failing = false;
    } catch (err) {
      if (!failing) WT.fail(err);
      failing = true;
      return;
    }
    const jobs = stats.jobs || {}, perf = stats.performance || {}, s = stats.system || {};
    put("queued", jobs.queued); put("processing", jobs.processing); put("completed", jobs.completed);
    put("failed", jobs.failed); put("users", (stats.users || {}).total);
    put("success", perf.success_rate === null ? null : perf.success_rate + "%");
    put("avg", perf.avg_processing_time); put("rtf", stats.real_time_factor);
    const now = Date.now();
    samples.push({ t: now, cpu: s.cpu_percent || 0, mem: (s.memory || {}).percent || 0 });
    samples = samples.filter((p) => now - p.t <= HOUR);
    try { localStorage.setItem(STORE, JSON.stringify(samples)); } catch (err) { /* storage full: keep in memory */ }
    const minutes = Math.round(span(now) / 60000);
    for (const label of document.querySelectorAll(".span-label")) label.textContent = minutes >= 60 ? "1 h ago" : minutes + " min ago";
    chart(document.getElementById("cpu-chart"), "cpu");
    chart(document.getElementById("mem-chart"), "mem");
    document.getElementById("cpu-now").textContent = Math.round(s.cpu_percent || 0) + "%";
    document.getElementById("mem-now").textContent = Math.round((s.memory || {}).percent || 0) + "%";
    const peak = (key) => samples.length < 2 ? "collecting: one sample every 10 s"
      : "peak " + Math.round(Math.max(...samples.map((p) => p[key]))) + "%";
    document.getElementById("cpu-detail").textContent = peak("cpu");
    document.getElementById("mem-detail").textContent = peak("mem");
    system(stats);
    workers(stats);
    engine(stats);
    document.getElementById("stats-updated").textContent = "updated " + new Date().toLocaleTimeString();
  }
  WT.poll(sample, 10000);

  WT.logTail("/ws/logs/system", document.getElementById("log"), document.getElementById("log-state"));

  const control = document.getElementById("server-control");
  if (control) {
    control.addEventListener("click", async (e) => {
      const button = e.target.closest("button[data-control]");
      if (!button) return;
      const action = button.dataset.control;
      const question = action === "restart"
        ? "Restart the server? The web server reloads and workers restart after their running job."
        : "Shut the appliance down? It stops after running jobs finish and must be started again by hand.";
      if (!confirm(question)) return;
      button.disabled = true;
      try {
        const answer = await WT.api("/admin/" + action, { method: "POST" });
        WT.toast(answer.message || "Done.", "ok");
      } catch (err) {
        WT.fail(err);
      } finally {
        button.disabled = false;
      }
    });
  }
})();
