/* Admin settings: cleanup rules (/admin/cleanup-config) and worker concurrency (/admin/concurrency). */
(function () {
  "use strict";
  const cleanup = document.getElementById("cleanup-form");
  const concurrency = document.getElementById("concurrency-form");

  function fill(form, data) {
    for (const field of form.querySelectorAll("input")) {
      if (data[field.name] !== undefined && data[field.name] !== null) field.value = data[field.name];
    }
  }

  function values(form) { // the API wants integers, never strings
    return Object.fromEntries([...form.querySelectorAll("input")].map((f) => [f.name, Number.parseInt(f.value, 10)]));
  }

  function showCleanup(data) {
    fill(cleanup, data);
    const last = data.last_run;
    document.getElementById("cleanup-last").textContent = last
      ? "Last run " + WT.when(last.at) + " · removed " + (last.files_removed || 0) + " files and " +
        (last.jobs_deleted || 0) + " jobs"
      : "The cleanup task has not run yet.";
  }

  function showConcurrency(data) {
    fill(concurrency, data);
    document.getElementById("concurrency-now").textContent = "Running now: " + data.running_workers +
      " worker" + (data.running_workers === 1 ? "" : "s") + " on " + data.cpu_count + " CPU cores" +
      (data.supervisor ? "" : " · not started by `whisper-transcriber run`: worker count changes need a restart");
  }

  async function load() {
    try {
      showCleanup(await WT.api("/admin/cleanup-config"));
      showConcurrency(await WT.api("/admin/concurrency"));
    } catch (err) {
      WT.fail(err);
    }
  }

  function onSubmit(form, url, show, message) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        const data = await WT.api(url, { method: "POST", json: values(form) });
        show(data);
        WT.toast(data.message || message, "ok");
      } catch (err) {
        WT.fail(err);
      } finally {
        button.disabled = false;
      }
    });
  }
  onSubmit(cleanup, "/admin/cleanup-config", showCleanup, "Cleanup rules saved.");
  onSubmit(concurrency, "/admin/concurrency", showConcurrency, "Concurrency saved.");
  load();
})();
