/* Admin users: list (/admin/users), add, change role, enable or disable, reset a password, delete. */
(function () {
  "use strict";
  const body = document.getElementById("users-body");
  const me = (document.querySelector(".who-name") || {}).textContent;

  function button(action, label, danger) {
    return WT.el("button", { type: "button", class: "btn btn-small" + (danger ? " btn-danger" : ""), "data-action": action }, label);
  }

  function render(users) {
    body.replaceChildren(...users.map((u) => WT.el("tr", { "data-id": u.id, "data-name": u.username },
      WT.el("td", { "data-label": "Username" }, u.username + (u.username === me ? " (you)" : "")),
      WT.el("td", { "data-label": "Email" }, u.email || "–"),
      WT.el("td", { "data-label": "Role" }, WT.el("span", { class: "badge" + (u.role === "admin" ? " live" : "") }, u.role)),
      WT.el("td", { "data-label": "Active" }, u.is_active ? "yes" : "no"),
      WT.el("td", { "data-label": "Created" }, WT.when(u.created_at)),
      WT.el("td", {}, WT.el("div", { class: "row-actions" },
        button(u.role === "admin" ? "role-user" : "role-admin", u.role === "admin" ? "Make user" : "Make admin"),
        button(u.is_active ? "disable" : "enable", u.is_active ? "Disable" : "Enable"),
        button("password", "Set password"),
        button("delete", "Delete", true))))));
  }

  async function load() {
    try {
      render((await WT.api("/admin/users?limit=500")).users);
    } catch (err) {
      WT.fail(err);
    }
  }

  body.addEventListener("click", async (e) => {
    const el = e.target.closest("button[data-action]");
    if (!el) return;
    const tr = el.closest("tr");
    const url = "/admin/users/" + encodeURIComponent(tr.dataset.id);
    const name = tr.dataset.name;
    const action = el.dataset.action;
    let request;
    if (action === "delete") {
      if (!confirm("Delete the account " + name + " with its API keys? Its jobs stay.")) return;
      request = { method: "DELETE" };
    } else if (action === "password") {
      const password = prompt("New password for " + name + ":");
      if (!password) return;
      request = { method: "PATCH", json: { password } };
    } else if (action.startsWith("role-")) {
      request = { method: "PATCH", json: { role: action.slice(5) } };
    } else {
      request = { method: "PATCH", json: { is_active: action === "enable" } };
    }
    try {
      await WT.api(url, request);
      WT.toast("Saved " + name + ".", "ok");
      load();
    } catch (err) {
      WT.fail(err);
    }
  });

  const form = document.getElementById("user-form");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    if (!data.email) delete data.email;
    try {
      await WT.api("/admin/users", { method: "POST", json: data });
      WT.toast("Added " + data.username + ".", "ok");
      form.reset();
      load();
    } catch (err) {
      WT.fail(err);
    }
  });
  load();
})();
