/* Login: POST /auth/login as JSON; the answer sets the session and CSRF cookies, then we go on. */
(function () {
  "use strict";
  const form = document.getElementById("login-form");
  const error = document.getElementById("login-error");

  function show(message) {
    error.textContent = message;
    error.hidden = false;
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const username = form.elements.namedItem("username").value.trim();
    const password = form.elements.namedItem("password").value;
    if (!username || !password) return show("Enter your username and password.");
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    error.hidden = true;
    try {
      await WT.api("/auth/login", { method: "POST", json: { username, password }, noRedirect: true });
      location.assign(form.dataset.next || "/");
    } catch (err) {
      if (err.status === 401) show("Incorrect username or password.");
      else if (err.status === 429) show("Too many failed attempts. " + err.message.replace(/^Too many requests\. /, ""));
      else show(err.message);
      form.elements.namedItem("password").select();
    } finally {
      button.disabled = false;
    }
  });
})();
