/* API keys: list (/api/api-keys/), create (the secret is shown once), revoke. */
(function () {
  "use strict";
  const body = document.getElementById("keys-body");
  const all = document.getElementById("all-keys");

  function render(keys) {
    body.replaceChildren(...keys.map((k) => WT.el("tr", { "data-id": k.key_id, "data-name": k.name },
      WT.el("td", { "data-label": "Name" }, k.name + (k.username ? " (" + k.username + ")" : "")),
      WT.el("td", { "data-label": "Key" }, WT.el("code", {}, k.key_preview)),
      WT.el("td", { "data-label": "Permissions" }, (k.permissions || []).join(", ")),
      WT.el("td", { "data-label": "Last used" }, k.last_used ? WT.when(k.last_used) + " (" + k.usage_count + "×)" : "never"),
      WT.el("td", { "data-label": "Expires" }, k.expires_at ? WT.when(k.expires_at) : "never"),
      WT.el("td", {}, k.is_active
        ? WT.el("button", { type: "button", class: "btn btn-small btn-danger" }, "Revoke")
        : WT.el("span", { class: "badge status-cancelled" }, "revoked")))));
    document.getElementById("keys-empty").hidden = keys.length > 0;
  }

  async function load() {
    try {
      render((await WT.api("/api/api-keys/" + (all && all.checked ? "?all=true" : ""))).api_keys);
    } catch (err) {
      WT.fail(err);
    }
  }

  body.addEventListener("click", async (e) => {
    const button = e.target.closest("button");
    if (!button) return;
    const tr = button.closest("tr");
    if (!confirm("Revoke the key " + tr.dataset.name + "? Programs using it stop working.")) return;
    try {
      await WT.api("/api/api-keys/" + encodeURIComponent(tr.dataset.id), { method: "DELETE" });
      WT.toast("Revoked " + tr.dataset.name + ".", "ok");
      load();
    } catch (err) {
      WT.fail(err);
    }
  });
  if (all) all.addEventListener("change", load);

  const form = document.getElementById("key-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const permissions = [...form.querySelectorAll("input[name=permissions]:checked")].map((c) => c.value);
    const days = Number.parseInt(form.elements.namedItem("expires_days").value, 10);
    try {
      const key = await WT.api("/api/api-keys/", { method: "POST", json: {
        name: form.elements.namedItem("name").value.trim(), permissions, expires_days: Number.isNaN(days) ? null : days } });
      document.getElementById("secret-value").textContent = key.api_key;
      document.getElementById("new-secret").hidden = false;
      form.reset();
      load();
    } catch (err) {
      WT.fail(err);
    }
  });

  document.getElementById("copy-secret").addEventListener("click", async () => {
    const text = document.getElementById("secret-value").textContent;
    try {
      await navigator.clipboard.writeText(text); // only on https or localhost
    } catch (err) {
      const range = document.createRange(); // plain http on the LAN: select it for Ctrl+C instead
      range.selectNodeContents(document.getElementById("secret-value"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      return WT.toast("Selected: press Ctrl+C (or ⌘C) to copy.", "info");
    }
    WT.toast("Copied.", "ok");
  });
  load();
})();
