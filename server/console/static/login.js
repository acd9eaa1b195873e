// The login page: trade the operator token for a session cookie, then go to the console.
"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const error = document.getElementById("login-error");
  error.textContent = "";
  const token = document.getElementById("token").value.trim();
  let response;
  try {
    response = await fetch("/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ token }),
      credentials: "same-origin",
    });
  } catch (failure) {
    error.textContent = `the console did not answer (${failure.message})`;
    return;
  }
  if (response.ok) {
    window.location.assign("/#/overview");
  } else {
    const body = await response.json().catch(() => ({}));
    error.textContent = body.error || `login failed (${response.status})`;
  }
});
