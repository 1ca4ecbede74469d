/* Jobs table on the dashboard: one page of GET /api/jobs/, refreshed every second while a job on it
   is queued or running (every 10 s otherwise). Rows are updated in place, so an open menu or the
   focus survives a refresh. Also shows a banner when no worker is running. */
(function () {
  "use strict";
  const body = document.getElementById("jobs-body");
  if (!body) return;
  const section = document.getElementById("jobs");
  const PAGE = 20;
  const FORMATS = ["txt", "srt", "vtt", "json", "tsv"];
  const ACTIVE = new Set(["queued", "processing"]);
  const CACHED_KINDS = new Set(["video", "sidecar"]); // jobs whose outputs /download and /purge act on
  let offset = 0, search = "", total = 0, failing = false, scrolled = false;
  let highlight = section.dataset.highlight || "";

  function cell(label, ...children) {
    return WT.el("td", { "data-label": label }, ...children);
  }

  function actionsFor(job) {
    const box = WT.el("div", { class: "row-actions" });
    if (job.status === "completed") {
      const pick = WT.el("select", { "aria-label": "Download transcript", "data-download": "" },
        WT.el("option", { value: "" }, "Download…"), ...FORMATS.map((f) => WT.el("option", { value: f }, f.toUpperCase())));
      box.appendChild(pick);
      if (job.kind === "video" && !job.purged) {
        box.appendChild(WT.el("button", { type: "button", class: "btn btn-small", "data-download": "video",
          title: "The video with the transcript as a subtitle track" }, "Video"));
      }
    }
    if (ACTIVE.has(job.status)) box.appendChild(WT.el("button", { type: "button", class: "btn btn-small", "data-action": "cancel" }, "Cancel"));
    // Video and library jobs keep their stage outputs in a cache; purging frees the space and Retry redoes them.
    if (CACHED_KINDS.has(job.kind) && !ACTIVE.has(job.status) && !job.purged) {
      box.appendChild(WT.el("button", { type: "button", class: "btn btn-small", "data-action": "purge",
        title: "Delete the cached stage outputs, the subtitled video too" }, "Purge"));
    }
    if (job.status === "failed" || job.status === "cancelled" || job.purged) {
      box.appendChild(WT.el("button", { type: "button", class: "btn btn-small", "data-action": "retry" }, "Retry"));
    }
    box.appendChild(WT.el("button", { type: "button", class: "btn btn-small btn-danger", "data-action": "delete" }, "Delete"));
    return box;
  }

  function createRow(job) {
    const bar = WT.el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-label": "Progress of " + job.filename }, WT.el("span"));
    const tr = WT.el("tr", { "data-job-id": job.job_id },
      cell("File", WT.el("a", { href: "/ui/jobs/" + encodeURIComponent(job.job_id) }, job.filename)),
      cell("Status", WT.el("span", { class: "badge" }), WT.el("div", { class: "row-error small", hidden: true })),
      WT.el("td", { "data-label": "Progress", class: "progress-cell" },
        WT.el("div", { class: "progress-row" }, bar, WT.el("span", { class: "progress-label" }))),
      cell("Length", ""), cell("Model", job.model), cell("Created", WT.when(job.created_at)),
      WT.el("td", { class: "actions-cell" }));
    tr.firstChild.classList.add("file");
    return tr;
  }

  function updateRow(tr, job) {
    const [, statusCell, progressCell, lengthCell] = tr.children;
    const pct = job.status === "completed" ? 100 : Math.floor(job.progress || 0);
    const badge = statusCell.firstChild;
    badge.className = "badge status-" + job.status;
    badge.textContent = job.status;
    const reason = statusCell.querySelector(".row-error");
    reason.textContent = job.error || "";
    reason.hidden = !job.error;
    const bar = progressCell.querySelector(".bar");
    bar.firstChild.style.width = pct + "%";
    bar.setAttribute("aria-valuenow", pct);
    bar.classList.toggle("done", job.status === "completed");
    bar.classList.toggle("failed", job.status === "failed");
    progressCell.querySelector(".progress-label").textContent = pct + "%";
    bar.title = job.status === "processing" ? "Stage: " + job.stage : job.status;
    lengthCell.textContent = job.duration ? WT.clock(job.duration) : "–";
    const state = job.status + (job.purged ? ":purged" : "");
    if (tr.dataset.state !== state) { // rebuilt only on a change, so an open menu stays open
      tr.dataset.state = state;
      tr.lastChild.replaceChildren(actionsFor(job));
    }
    tr.classList.toggle("highlight", job.job_id === highlight);
  }

  function render(data) {
    total = data.total;
    const seen = new Set();
    data.jobs.forEach((job, i) => {
      seen.add(job.job_id);
      let tr = body.querySelector('tr[data-job-id="' + CSS.escape(job.job_id) + '"]');
      if (!tr) tr = createRow(job);
      updateRow(tr, job);
      if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
    });
    for (const tr of [...body.children]) if (!seen.has(tr.dataset.jobId)) tr.remove();
    const empty = document.getElementById("jobs-empty");
    empty.hidden = data.jobs.length > 0;
    empty.textContent = search ? "No jobs match “" + search + "”." :
      "No jobs yet. Drop an audio or video file above and its transcript appears here.";
    document.querySelector(".jobs-table").hidden = data.jobs.length === 0;
    const last = Math.min(offset + data.jobs.length, total);
    document.getElementById("page-info").textContent = total ? (offset + 1) + "–" + last + " of " + total : "";
    document.getElementById("prev").disabled = offset === 0;
    document.getElementById("next").disabled = last >= total;
    document.getElementById("pager").hidden = total <= PAGE;
    const marked = highlight && body.querySelector("tr.highlight");
    if (marked && !scrolled) { scrolled = true; marked.scrollIntoView({ block: "center" }); }
  }

  async function load() {
    const params = new URLSearchParams({ limit: PAGE, offset });
    if (search) params.set("search", search);
    try {
      const data = await WT.api("/api/jobs/?" + params);
      failing = false;
      render(data);
      poller.every(data.jobs.some((j) => ACTIVE.has(j.status)) ? 1000 : 10000);
    } catch (err) {
      if (!failing) WT.fail(err); // once, not every second while the server is away
      failing = true;
      poller.every(5000);
    }
  }
  const poller = WT.poll(load, 1000);

  /* Purge deletes a job's cached stage outputs (the subtitled video too); Retry then runs every stage again. */
  async function purge(jobId, label) {
    if (!confirm("Purge the cached outputs of " + label + ", the subtitled video too? Retry makes them again.")) return false;
    await WT.api("/purge/" + encodeURIComponent(jobId), { method: "POST" });
    WT.toast("Purged " + label + ". Retry runs it again.", "ok");
    return true;
  }

  body.addEventListener("click", async (e) => {
    const button = e.target.closest("button[data-action], button[data-download]");
    if (!button) return;
    const tr = button.closest("tr");
    const label = tr.querySelector("a").textContent;
    button.disabled = true;
    try {
      if (button.dataset.download === "video") await WT.download("/download/" + encodeURIComponent(tr.dataset.jobId));
      else if (button.dataset.action === "purge") { if (await purge(tr.dataset.jobId, label)) poller.now(); }
      else if (await WT.jobAction(tr.dataset.jobId, button.dataset.action, label)) poller.now();
    } catch (err) {
      WT.fail(err);
    } finally {
      button.disabled = false;
    }
  });
  body.addEventListener("change", async (e) => {
    const pick = e.target.closest("select[data-download]");
    if (!pick || !pick.value) return;
    const id = pick.closest("tr").dataset.jobId;
    try {
      await WT.download("/api/export/download/" + encodeURIComponent(id) + "/" + pick.value);
    } catch (err) {
      WT.fail(err);
    }
    pick.value = "";
  });

  let typing = null;
  document.getElementById("search").addEventListener("input", (e) => {
    clearTimeout(typing);
    typing = setTimeout(() => { search = e.target.value.trim(); offset = 0; poller.now(); }, 300);
  });
  document.getElementById("search-form").addEventListener("submit", (e) => e.preventDefault());
  document.getElementById("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); poller.now(); });
  document.getElementById("next").addEventListener("click", () => { offset += PAGE; poller.now(); });
  document.addEventListener("wt:job-created", (e) => {
    if (e.detail && e.detail.job_id) { highlight = e.detail.job_id; scrolled = true; }
    offset = 0;
    poller.now();
  });

  /* Tell a first-time user why jobs would sit in the queue. */
  async function health() {
    const banner = document.getElementById("health-banner");
    try {
      const h = await WT.api("/health");
      const whisper = (h.engine_statuses || {}).whisper;
      let text = "";
      if (whisper === "NOT_CONFIGURED") text = "The default speech model is not installed, so jobs cannot run. " +
        "Install it with: whisper-transcriber models install tiny.en";
      else if (!h.worker_alive) text = "No transcription worker is running yet; jobs wait in the queue until one starts.";
      else if (whisper === "ERROR") text = "The speech engine failed several times in a row and is paused for a minute.";
      banner.textContent = text;
      banner.hidden = !text;
    } catch (err) {
      banner.hidden = true;
    }
  }
  WT.poll(health, 30000);
})();
