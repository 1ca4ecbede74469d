/* Upload: drop or choose files; each one becomes a job. Small files go in one multipart request
   (POST /api/jobs/); files above data-chunk-threshold use the chunked-upload API, which survives a
   dropped connection: after a failure it waits (1, 2, 4 … 30 s), asks the server which chunks
   arrived, and sends only the missing ones. The session id is kept in localStorage, so choosing the
   same file again after a reload resumes it too. Files are sent one after another. */
(function () {
  "use strict";
  const section = document.getElementById("upload");
  if (!section) return;
  const list = document.getElementById("uploads");
  const input = document.getElementById("file-input");
  const zone = document.getElementById("dropzone");
  const MAX_FAILURES = 8; // consecutive failed attempts before an upload gives up
  const RETRYABLE = new Set([0, 408, 429, 500, 502, 503, 504]);
  const queue = [];
  let busy = false;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  function options() {
    const pick = (id) => document.getElementById(id).value;
    const opts = { model: pick("opt-model"), language: pick("opt-language"), task: pick("opt-task"),
      dub: pick("opt-dub") };
    for (const key of Object.keys(opts)) if (!opts[key]) delete opts[key];
    return opts;
  }

  /* English-only models cannot translate or take another language: say so before the server does. */
  function checkModel() {
    const o = options();
    const englishOnly = /\.en(\b|-|$)/.test(o.model || "");
    document.getElementById("model-hint").hidden = !(englishOnly && ((o.language && o.language !== "en") ||
      o.task === "translate"));
  }
  for (const id of ["opt-model", "opt-language", "opt-task"]) {
    document.getElementById(id).addEventListener("change", checkModel);
  }

  /* One row per file: name, state text and a progress bar. */
  function row(file) {
    const bar = WT.el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100,
      "aria-label": "Upload progress" }, WT.el("span"));
    const label = WT.el("span", { class: "progress-label" }, "0%");
    const state = WT.el("span", { class: "state" }, "Waiting…");
    const li = WT.el("li", { class: "upload-item" }, WT.el("span", { class: "name", title: file.name }, file.name),
      state, WT.el("div", { class: "progress-row" }, bar, label));
    list.prepend(li);
    return {
      li,
      progress(fraction) {
        const pct = Math.max(0, Math.min(100, Math.floor(fraction * 100)));
        bar.firstChild.style.width = pct + "%";
        bar.setAttribute("aria-valuenow", pct);
        label.textContent = pct + "%";
      },
      state(text) { state.textContent = text; },
      done(job) {
        li.classList.add("done");
        li.dataset.jobId = job.job_id;
        this.progress(1);
        bar.classList.add("done");
        state.replaceChildren("Uploaded · ", WT.el("a", { href: "/ui/jobs/" + encodeURIComponent(job.job_id) }, "open job"));
      },
      fail(message) {
        li.classList.add("error");
        bar.classList.add("failed");
        state.textContent = message;
      },
    };
  }

  /* XMLHttpRequest rather than fetch: only it reports upload progress. Resolves with the parsed JSON,
     rejects with a WT.ApiError (status 0 for a network failure). */
  function send(method, url, body, contentType, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.setRequestHeader("X-CSRF-Token", WT.cookie("wt_csrf"));
      if (contentType) xhr.setRequestHeader("Content-Type", contentType);
      if (onProgress) xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
      xhr.onerror = xhr.ontimeout = xhr.onabort = () =>
        reject(new WT.ApiError("The connection to the server was lost.", 0, "NETWORK"));
      xhr.onload = () => {
        let data = null;
        try { data = JSON.parse(xhr.responseText); } catch (err) { /* not JSON: the message says why */ }
        if (xhr.status >= 200 && xhr.status < 300) return resolve(data);
        const headers = { get: (name) => xhr.getResponseHeader(name) };
        reject(new WT.ApiError(WT.errorMessage(xhr.status, data, headers), xhr.status, data && data.error_code));
      };
      xhr.send(body);
    });
  }

  async function simple(file, opts, ui) {
    const form = new FormData();
    form.append("file", file, file.name);
    for (const [key, value] of Object.entries(opts)) form.append(key, value);
    ui.state("Uploading…");
    return send("POST", "/api/jobs/", form, null, (loaded, total) => {
      ui.progress(loaded / total);
      if (loaded >= total) ui.state("Checking the file…"); // the server probes the media before answering
    });
  }

  /* Sends the file in chunks (retrying with backoff); `status` is refreshed from the server after each failure.
     Indexes here count from 0 for slicing; the server numbers chunks 1 to N, so they are converted at the edges. */
  async function chunked(file, opts, ui) {
    const size = Number(section.dataset.chunkSize) || 8 * 1024 * 1024;
    const key = ["wt-upload", file.name, file.size, file.lastModified, size].join(":");
    const base = "/api/chunked-uploads/";
    let id = localStorage.getItem(key);
    let status = null;
    if (id) {
      try {
        status = await WT.api(base + id);
        ui.state("Resuming an earlier upload…");
      } catch (err) {
        if (err.status !== 404) throw err;
        id = null; // expired or finished meanwhile: start over
      }
    }
    if (!id) {
      const created = await WT.api(base + "initialize", { method: "POST", json: {
        filename: file.name, file_size: file.size, chunk_size: size, content_type: file.type || null } });
      id = created.session_id;
      localStorage.setItem(key, id);
      status = { total_chunks: created.total_chunks, received_chunks: [], chunks: [] };
    }
    const total = status.total_chunks;
    const checksums = new Array(total);
    const sizeOf = (n) => Math.min(size, file.size - n * size);
    const digest = async (n) => (checksums[n] = checksums[n] || await WT.sha256(
      await file.slice(n * size, n * size + sizeOf(n)).arrayBuffer()));
    const fromServer = (numbers) => new Set(numbers.map((k) => k - 1));
    let received = fromServer(status.received_chunks);
    let failures = 0;

    async function refresh() { // the server's view: a chunk may have arrived although its answer was lost
      status = await WT.api(base + id);
      received = fromServer(status.received_chunks);
    }

    for (let pass = 0; ; pass++) {
      while (received.size < total) {
        const n = [...Array(total).keys()].find((i) => !received.has(i));
        const doneBytes = [...received].reduce((sum, i) => sum + sizeOf(i), 0);
        try {
          await digest(n);
          ui.state("Uploading part " + (n + 1) + " of " + total + "…");
          await send("POST", base + id + "/chunks/" + (n + 1), file.slice(n * size, n * size + sizeOf(n)),
            "application/octet-stream", (loaded) => ui.progress((doneBytes + loaded) / file.size));
          received.add(n);
          failures = 0;
        } catch (err) {
          if (!RETRYABLE.has(err.status) || ++failures > MAX_FAILURES) throw err;
          const wait = Math.min(30, 2 ** (failures - 1));
          ui.state("Connection problem; retrying in " + wait + " s…");
          await sleep(wait * 1000);
          try { await refresh(); } catch (again) { if (!RETRYABLE.has(again.status)) throw again; }
        }
      }
      // Compare with what the server stored; any chunk that differs is sent again (at most twice).
      ui.state("Verifying…");
      for (let n = 0; n < total; n++) await digest(n);
      await refresh();
      const stored = new Map((status.chunks || []).map((c) => [c.chunk_number - 1, c.checksum]));
      const wrong = checksums.map((sum, n) => (stored.get(n) === sum ? -1 : n)).filter((n) => n >= 0);
      if (!wrong.length) break;
      if (pass >= 2) throw new WT.ApiError("The upload keeps arriving damaged; try again later.", 0, "DAMAGED");
      for (const n of wrong) received.delete(n);
    }
    ui.state("Finishing…");
    try {
      const job = await WT.api(base + id + "/finalize", { method: "POST", json: { chunk_checksums: checksums, ...opts } });
      localStorage.removeItem(key);
      return job;
    } catch (err) {
      if (err.status === 0) { // the answer was lost; a session that is gone was finalized into a job
        await sleep(2000);
        try { await WT.api(base + id); } catch (gone) {
          if (gone.status === 404) { localStorage.removeItem(key); return { job_id: null }; }
        }
      }
      throw err; // the session stays: choosing the file again only finalizes it again
    }
  }

  const VIDEO_EXTENSIONS = /\.(mp4|mkv|webm|mov|avi|m4v)$/i;
  const isVideo = (file) => (file.type || "").startsWith("video/") || VIDEO_EXTENSIONS.test(file.name);

  async function upload(file, ui) {
    const limit = Number(section.dataset.maxUpload) || 0;
    if (!file.size) throw new WT.ApiError("The file is empty.", 0);
    if (limit && file.size > limit) throw new WT.ApiError("The file is larger than this server's limit of " + WT.bytes(limit) + ".", 0);
    const threshold = Number(section.dataset.chunkThreshold) || 25 * 1024 * 1024; // read now: tests lower it
    const opts = options();
    if (!isVideo(file)) delete opts.dub; // only video is dubbed; audio is transcribed as usual
    return file.size > threshold ? chunked(file, opts, ui) : simple(file, opts, ui);
  }

  async function drain() {
    if (busy) return;
    busy = true;
    while (queue.length) {
      const { file, ui } = queue.shift();
      try {
        const job = await upload(file, ui);
        if (job && job.job_id) {
          ui.done(job);
          document.dispatchEvent(new CustomEvent("wt:job-created", { detail: job }));
        } else {
          ui.progress(1);
          ui.state("Uploaded; the job appears in the list below.");
          document.dispatchEvent(new CustomEvent("wt:job-created", { detail: {} }));
        }
      } catch (err) {
        ui.fail(err.message);
        WT.toast(file.name + ": " + err.message, "error");
      }
    }
    busy = false;
  }

  function add(files) {
    for (const file of files) queue.push({ file, ui: row(file) });
    drain();
  }

  input.addEventListener("change", () => {
    add([...input.files]);
    input.value = ""; // choosing the same file again must fire change again
  });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    add([...e.dataTransfer.files]);
  });
  // A drop that misses the zone would otherwise open the file in the tab and leave the dashboard.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  window.addEventListener("beforeunload", (e) => {
    if (busy) { e.preventDefault(); e.returnValue = ""; }
  });
  checkModel();
})();
