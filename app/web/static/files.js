/* Admin files: uploads, transcripts and logs with sizes (GET /admin/files), delete one (DELETE). */
(function () {
  "use strict";
  const body = document.getElementById("files-body");
  const tabs = document.getElementById("folder-tabs");
  let folder = "uploads", data = null;

  function render() {
    for (const tab of tabs.children) tab.setAttribute("aria-selected", String(tab.dataset.folder === folder));
    const entries = (data && data[folder]) || [];
    body.replaceChildren(...entries.map((f) => WT.el("tr", { "data-name": f.name },
      WT.el("td", { "data-label": "Name" }, f.name),
      WT.el("td", { "data-label": "Size", class: "num" }, WT.bytes(f.size)),
      WT.el("td", { "data-label": "Modified" }, WT.when(f.modified)),
      WT.el("td", {}, WT.el("button", { type: "button", class: "btn btn-small btn-danger" }, "Delete")))));
    document.getElementById("files-empty").hidden = entries.length > 0;
    if (data) {
      document.getElementById("files-summary").textContent = data.total_files + " files, " + WT.bytes(data.total_size) + " in total.";
    }
  }

  async function load() {
    try {
      data = await WT.api("/admin/files");
    } catch (err) {
      WT.fail(err);
    }
    render();
  }

  tabs.addEventListener("click", (e) => {
    const tab = e.target.closest("[data-folder]");
    if (tab) { folder = tab.dataset.folder; render(); }
  });
  body.addEventListener("click", async (e) => {
    const button = e.target.closest("button");
    if (!button) return;
    const name = button.closest("tr").dataset.name;
    if (!confirm("Delete " + folder + "/" + name + "? This cannot be undone.")) return;
    button.disabled = true;
    try {
      await WT.api("/admin/files", { method: "DELETE", json: { folder, filename: name } });
      WT.toast("Deleted " + name + ".", "ok");
      await load();
    } catch (err) {
      WT.fail(err);
      button.disabled = false;
    }
  });
  load();
})();
