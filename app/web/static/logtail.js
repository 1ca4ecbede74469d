/* Follows a log over a WebSocket and shows its state (connecting, live, closed). Same-origin sockets
   carry the session cookie, which is how the server authenticates them. The server sends the log so
   far on every connect, so the panel is cleared then; after an unexpected close it reconnects with a
   growing delay. A job's socket is closed with code 1000 once the job has finished: that is the end. */
(function () {
  "use strict";
  const MAX_LINES = 2000;
  const LEVEL = /\b(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b/;
  const JOB_LINE = /^\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d)Z (\w+) job=\S+ (.*)$/s; // workers/pipeline.py JobLog

  /* JSON log records (system log) become "time level logger: message"; plain lines stay as they are. */
  function readable(line) {
    if (line.startsWith("{")) {
      try {
        const r = JSON.parse(line);
        const time = (r.ts || "").replace("T", " ").replace(/\.\d+Z$/, "Z");
        const extra = r.job_id ? " [job " + String(r.job_id).slice(0, 8) + "]" : "";
        return { text: [time, r.level, (r.logger || "") + ":", r.message].join(" ") + extra + (r.exc ? "\n" + r.exc : ""),
          level: r.level };
      } catch (err) { /* not JSON after all */ }
    }
    const job = JOB_LINE.exec(line);
    if (job) return { text: job[1] + " " + job[2] + " " + job[3], level: job[2] }; // the page names the job already
    const m = LEVEL.exec(line.slice(0, 40));
    return { text: line, level: m ? m[1] : "" };
  }

  WT.logTail = function (path, pre, badge, options) {
    const opts = options || {};
    let attempt = 0, socket = null;
    const state = (text, kind) => { badge.textContent = text; badge.className = "badge" + (kind ? " " + kind : ""); };

    function append(data) {
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
      for (const raw of String(data).split("\n")) {
        if (!raw.trim()) continue;
        const line = readable(raw);
        pre.appendChild(WT.el("span", { class: "log-line" + (line.level ? " lv-" + line.level : "") }, line.text));
      }
      while (pre.childElementCount > MAX_LINES) pre.firstElementChild.remove();
      if (atBottom) pre.scrollTop = pre.scrollHeight; // follow the end unless the reader scrolled up
    }

    function connect() {
      state("connecting");
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      socket = new WebSocket(scheme + location.host + path);
      let opened = false;
      socket.onopen = () => { opened = true; attempt = 0; pre.replaceChildren(); state("live", "live"); };
      socket.onmessage = (event) => append(event.data);
      socket.onclose = (event) => {
        if (event.code === 1000 && opts.endsWithJob) {
          state("closed · job finished");
          if (!pre.childElementCount) append("(the log is empty)");
          return;
        }
        if (++attempt > 8) return state("closed", "error");
        const wait = Math.min(30, 2 ** attempt);
        state((opened ? "closed" : "unavailable") + " · retrying in " + wait + " s", "error");
        setTimeout(connect, wait * 1000);
      };
    }
    connect();
    return { close() { attempt = 99; if (socket) socket.close(); } };
  };
})();
