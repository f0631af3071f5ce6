// Sign-in for the operator console: store the token in the montage_admin cookie (Path=/admin,
// SameSite=Strict) so the page itself can be requested, then reload. The API is always called
// with the Authorization header (admin.js reads the same cookie).
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const secure = location.protocol === "https:" ? "; Secure" : "";
  function store(token) {
    document.cookie = `montage_admin=${encodeURIComponent(token)}; Path=/admin; SameSite=Strict; Max-Age=43200${secure}`;
    location.replace("/admin/queues");
  }
  function fail(text) { $("signin-error").textContent = text; }
  if (document.body.dataset.dev !== "1") $("dev-form").hidden = true;
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const token = $("token").value.trim();
    if (!token) return fail("Paste an access token first.");
    store(token);
  });
  $("dev-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { user_id: $("dev-user").value.trim() };
    if ($("dev-admin").checked) body.role = "admin";
    try {
      const r = await fetch("/api/v1/dev/token", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const data = await r.json();
      if (!r.ok) return fail(data.error || `HTTP ${r.status}`);
      store(data.access_token);
    } catch (err) { fail(String(err)); }
  });
  $("signout-btn").addEventListener("click", () => {
    document.cookie = `montage_admin=; Path=/admin; SameSite=Strict; Max-Age=0${secure}`;
    $("message").textContent = "Signed out.";
  });
  document.body.dataset.ready = "1";
})();
