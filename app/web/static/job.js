/* Job page: progress every second while the job is queued or running (the page reloads once it has
   finished, to show the transcript), timestamps that seek the player, the live log, actions. */
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const id = root.dataset.jobId;
  const base = "/api/jobs/" + encodeURIComponent(id);
  const bar = root.querySelector(".bar");
  const player = document.getElementById("player");
  const ACTIVE = new Set(["queued", "processing"]);

  function show(p) {
    const pct = p.status === "completed" ? 100 : Math.floor(p.progress || 0);
    bar.firstChild.style.width = pct + "%";
    bar.setAttribute("aria-valuenow", pct);
    bar.classList.toggle("done", p.status === "completed");
    bar.classList.toggle("failed", p.status === "failed");
    document.getElementById("job-progress").textContent = pct + "%";
    const badge = document.getElementById("job-status");
    badge.textContent = p.status;
    badge.className = "badge status-" + p.status;
    let stage = p.stage || p.status;
    if (p.status === "processing" && p.estimated_time_remaining) stage += " · about " + WT.clock(p.estimated_time_remaining) + " left";
    const line = document.getElementById("job-stage");
    line.textContent = "Stage: " + stage;
    line.hidden = !ACTIVE.has(p.status);
  }
  show({ status: root.dataset.status, progress: Number(bar.dataset.progress), stage: document.getElementById("job-stage").textContent });

  if (ACTIVE.has(root.dataset.status)) {
    let failing = false;
    const poller = WT.poll(async () => {
      try {
        const p = await WT.api("/api/progress/" + encodeURIComponent(id));
        failing = false;
        show(p);
        if (!ACTIVE.has(p.status)) { poller.stop(); setTimeout(() => location.reload(), 600); }
      } catch (err) {
        if (err.status === 404) { poller.stop(); WT.toast("This job was deleted.", "error"); return; }
        if (!failing) WT.fail(err);
        failing = true;
      }
    }, 1000);
  }

  // Timestamps seek the player; the segment being played is highlighted.
  const segments = [...document.querySelectorAll(".segment")];
  document.addEventListener("click", (e) => {
    const ts = e.target.closest(".ts");
    if (!ts || !player) return;
    player.currentTime = Number(ts.dataset.start);
    player.play().catch(() => { /* autoplay refused: the position is set anyway */ });
  });
  if (player && segments.length) {
    const mark = () => {
      const t = player.currentTime;
      for (const s of segments) s.classList.toggle("current", t >= Number(s.dataset.start) && t < Number(s.dataset.end));
    };
    player.addEventListener("timeupdate", mark);
    player.addEventListener("seeked", mark);
  }

  /* Purge deletes the job's cached stage outputs (the subtitled video too); Retry then runs every stage again. */
  async function purge(jobId, label) {
    if (!confirm("Purge the cached outputs of " + label + ", the subtitled video too? Retry makes them again.")) return false;
    await WT.api("/purge/" + encodeURIComponent(jobId), { method: "POST" });
    WT.toast("Purged " + label + ". Retry runs it again.", "ok");
    return true;
  }

  document.getElementById("job-actions").addEventListener("click", async (e) => {
    const button = e.target.closest("button");
    if (!button) return;
    button.disabled = true;
    const label = document.querySelector(".job-title").textContent;
    try {
      if (button.dataset.download === "video") {
        await WT.download("/download/" + encodeURIComponent(id)); // the Dubarr route: the subtitled video
      } else if (button.dataset.download) {
        await WT.download("/api/export/download/" + encodeURIComponent(id) + "/" + button.dataset.download);
      } else if (button.dataset.action === "purge") {
        if (await purge(id, label)) setTimeout(() => location.reload(), 400);
      } else if (await WT.jobAction(id, button.dataset.action, label)) {
        if (button.dataset.action === "delete") location.assign("/");
        else setTimeout(() => location.reload(), 400);
      }
    } catch (err) {
      WT.fail(err);
    } finally {
      button.disabled = false;
    }
  });

  WT.logTail("/ws/logs/" + encodeURIComponent(id), document.getElementById("log"), document.getElementById("log-state"),
    { endsWithJob: true });
})();
