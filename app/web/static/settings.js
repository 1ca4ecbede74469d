/* Admin settings: cleanup rules (/admin/cleanup-config), worker concurrency (/admin/concurrency) and
   model aliases (/admin/settings). */
(function () {
  "use strict";
  const cleanup = document.getElementById("cleanup-form");
  const concurrency = document.getElementById("concurrency-form");
  const aliases = document.getElementById("aliases-form");

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

  function showAliases(data) {
    const map = data.model_aliases || {};
    document.getElementById("model_aliases").value = Object.entries(map).map(([k, v]) => k + "=" + v).join(", ");
    document.getElementById("aliases-now").textContent =
      (data.model_aliases_source === "admin" ? "Saved here (replaces WT_MODEL_ALIASES)" : "From WT_MODEL_ALIASES") +
      " · installed models: " + ((data.installed_models || []).join(", ") || "none") +
      " · default model: " + data.default_model;
  }

  async function load() {
    try {
      showCleanup(await WT.api("/admin/cleanup-config"));
      showConcurrency(await WT.api("/admin/concurrency"));
      showAliases(await WT.api("/admin/settings"));
    } catch (err) {
      WT.fail(err);
    }
  }

  function onSubmit(form, url, show, message, body) {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        const data = await WT.api(url, { method: "POST", json: (body || values)(form) });
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
  // The text goes as it is ("medium=base, small=base"): the server parses it and says what is wrong.
  onSubmit(aliases, "/admin/settings", showAliases, "Model names saved.",
    () => ({ model_aliases: document.getElementById("model_aliases").value }));
  document.getElementById("aliases-reset").addEventListener("click", async () => {
    try {
      showAliases(await WT.api("/admin/settings", { method: "POST", json: { model_aliases: null } }));
      WT.toast("Model names follow WT_MODEL_ALIASES again.", "ok");
    } catch (err) {
      WT.fail(err);
    }
  });
  load();
})();
