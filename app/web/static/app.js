/* Shared by every page: API calls with readable errors, toasts, formatting, polling, logout.
   Everything lives on window.WT; the page scripts (upload.js, jobs.js, ...) build on it. */
(function () {
  "use strict";
  const WT = (window.WT = {});
  const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
  const FALLBACK = {
    400: "The request was not accepted.",
    401: "Your session has ended. Please log in again.",
    403: "You are not allowed to do that.",
    404: "Not found. It may have been deleted.",
    409: "That is not possible in the current state.",
    413: "The file is larger than this server accepts.",
    415: "This file type is not supported.",
    500: "Something went wrong on the server. The details are in the server log.",
    502: "The server is not reachable right now. Try again shortly.",
    503: "The server is busy or restarting. Try again shortly.",
    504: "The server took too long to answer. Try again shortly.",
  };

  class ApiError extends Error {
    constructor(message, status, code) {
      super(message);
      this.status = status;
      this.code = code || null;
    }
  }
  WT.ApiError = ApiError;

  WT.cookie = function (name) {
    const found = document.cookie.split("; ").find((part) => part.startsWith(name + "="));
    return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
  };

  /* The server's error body is {detail, error_code, timestamp, request_id}; users see a sentence, never JSON. */
  WT.errorMessage = function (status, data, headers) {
    if (status === 429) {
      const wait = headers && headers.get("Retry-After");
      return "Too many requests. " + (wait ? "Try again in " + wait + " seconds." : "Wait a moment and try again.");
    }
    let detail = data && data.detail;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => (d && (d.msg || d.message)) || String(d)).join("; ");
    } else if (detail && typeof detail === "object") {
      detail = Object.entries(detail).map(([k, v]) => k + ": " + v).join("; ");
    }
    if (typeof detail === "string" && detail.trim()) {
      detail = detail.trim();
      return detail.charAt(0).toUpperCase() + detail.slice(1) + (/[.!?]$/.test(detail) ? "" : ".");
    }
    return FALLBACK[status] || "The server answered with an error (HTTP " + status + ").";
  };

  let expiring = false;
  function sessionExpired() {
    if (expiring) return;
    expiring = true;
    WT.toast("Your session has ended. Taking you to the login page…", "error");
    const next = encodeURIComponent(location.pathname + location.search);
    setTimeout(() => location.assign("/login?next=" + next), 1500);
  }

  /* Every request of the dashboard goes through here. Resolves to parsed JSON (or the Response with raw),
     rejects with an ApiError whose message is ready to show. */
  WT.api = async function (url, options) {
    const opts = options || {};
    const method = (opts.method || "GET").toUpperCase();
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (opts.json !== undefined) {
      init.body = JSON.stringify(opts.json);
      init.headers["Content-Type"] = "application/json";
    }
    if (!SAFE_METHODS.has(method)) init.headers["X-CSRF-Token"] = WT.cookie("wt_csrf");
    let response;
    try {
      response = await fetch(url, init);
    } catch (err) {
      throw new ApiError("Cannot reach the server. Check the network connection and try again.", 0, "NETWORK");
    }
    if (response.ok) {
      if (opts.raw) return response;
      const type = response.headers.get("Content-Type") || "";
      return type.includes("json") ? response.json() : response.text();
    }
    const data = await response.json().catch(() => null);
    if (response.status === 401 && !opts.noRedirect) sessionExpired();
    throw new ApiError(WT.errorMessage(response.status, data, response.headers), response.status,
      data && data.error_code);
  };

  /* Shows a message in the corner; errors stay longer and can be closed. */
  WT.toast = function (message, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const item = WT.el("div", { class: "toast toast-" + (kind || "info"), role: kind === "error" ? "alert" : "status" },
      WT.el("span", {}, message),
      WT.el("button", { type: "button", class: "toast-close", "aria-label": "Dismiss" }, "×"));
    item.querySelector("button").addEventListener("click", () => item.remove());
    box.appendChild(item);
    setTimeout(() => item.remove(), kind === "error" ? 12000 : 5000);
  };

  WT.fail = function (err) {
    WT.toast(err && err.message ? err.message : String(err), "error");
  };

  /* Builds an element; children are strings (set as text, never HTML) or nodes. */
  WT.el = function (tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(child) : child);
    }
    return node;
  };

  WT.clock = function (seconds) {
    const total = Math.max(0, Math.floor(Number(seconds) || 0));
    const h = Math.floor(total / 3600), m = Math.floor((total % 3600) / 60), s = total % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return h ? h + ":" + pad(m) + ":" + pad(s) : m + ":" + pad(s);
  };

  WT.bytes = function (n) {
    const units = ["B", "KB", "MB", "GB", "TB"];
    let value = Number(n) || 0, i = 0;
    while (value >= 1024 && i < units.length - 1) { value /= 1024; i++; }
    return (i ? value.toFixed(value < 10 ? 1 : 0) : value) + " " + units[i];
  };

  WT.when = function (iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    if (isNaN(date)) return iso;
    const sameDay = date.toDateString() === new Date().toDateString();
    return sameDay ? date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : date.toLocaleString([], { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  };

  /* Runs fn now and then every `interval` ms after it settles; waits while the tab is hidden. */
  WT.poll = function (fn, interval) {
    let timer = null, stopped = false, every = interval;
    async function tick() {
      timer = null;
      if (stopped) return;
      if (!document.hidden) {
        try { await fn(); } catch (err) { /* fn shows its own errors */ }
      }
      if (!stopped) timer = setTimeout(tick, every);
    }
    document.addEventListener("visibilitychange", () => { if (!document.hidden && timer) { clearTimeout(timer); tick(); } });
    tick();
    return {
      stop() { stopped = true; if (timer) clearTimeout(timer); },
      every(ms) { every = ms; },
      now() { if (timer) { clearTimeout(timer); tick(); } },
    };
  };

  /* Fetches a file and hands it to the browser as a download, so an error becomes a toast, not a page of JSON. */
  WT.download = async function (url) {
    const response = await WT.api(url, { raw: true });
    const disposition = response.headers.get("Content-Disposition") || "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    const name = match ? match[1] : url.split("/").pop();
    const href = URL.createObjectURL(await response.blob());
    const link = WT.el("a", { href, download: name, hidden: true });
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(href), 60000);
  };

  /* cancel / retry / delete of one job; resolves true when it happened. */
  WT.jobAction = async function (jobId, action, label) {
    const id = encodeURIComponent(jobId);
    if (action === "delete") {
      if (!confirm("Delete " + (label || "this job") + " and its transcript? This cannot be undone.")) return false;
      await WT.api("/api/jobs/" + id, { method: "DELETE" });
      WT.toast("Deleted " + (label || "the job") + ".", "ok");
    } else if (action === "cancel") {
      await WT.api("/api/jobs/" + id + "/cancel", { method: "POST" });
      WT.toast("Cancelling " + (label || "the job") + ".", "ok");
    } else if (action === "retry") {
      await WT.api("/api/jobs/" + id + "/restart", { method: "POST" });
      WT.toast("Queued " + (label || "the job") + " again.", "ok");
    }
    return true;
  };

  document.addEventListener("DOMContentLoaded", () => {
    for (const node of document.querySelectorAll("time[datetime]")) node.textContent = WT.when(node.dateTime);
    const logout = document.getElementById("logout");
    if (logout) {
      logout.addEventListener("click", async () => {
        try { await WT.api("/auth/logout", { method: "POST", noRedirect: true }); } catch (err) { /* gone anyway */ }
        location.assign("/login");
      });
    }
  });
})();
