/* Account forms: registration (POST /auth/register, then log in) and password change
   (POST /auth/change-password). Both check the repeated password before asking the server. */
(function () {
  "use strict";
  const error = document.getElementById("form-error");
  const ok = document.getElementById("form-ok");

  function show(message) {
    error.textContent = message;
    error.hidden = false;
    if (ok) ok.hidden = true;
  }

  function handle(form, submit) {
    if (!form) return;
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const field = (name) => form.elements.namedItem(name).value;
      if (field("password") !== field("confirm")) return show("The two new passwords differ.");
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      error.hidden = true;
      try {
        await submit(field);
      } catch (err) {
        show(err.message);
      } finally {
        button.disabled = false;
      }
    });
  }

  handle(document.getElementById("register-form"), async (field) => {
    const username = field("username").trim();
    const password = field("password");
    const email = field("email").trim() || undefined;
    if (!username || !password) return show("Choose a username and a password.");
    await WT.api("/auth/register", { method: "POST", json: { username, password, email }, noRedirect: true });
    await WT.api("/auth/login", { method: "POST", json: { username, password }, noRedirect: true });
    location.assign("/");
  });

  const passwordForm = document.getElementById("password-form");
  handle(passwordForm, async (field) => {
    await WT.api("/auth/change-password", { method: "POST", noRedirect: true,
      json: { current_password: field("current"), new_password: field("password") } });
    passwordForm.reset();
    ok.textContent = "Password changed. Your other sessions were signed out.";
    ok.hidden = false;
  });
})();
