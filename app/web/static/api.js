// The JSON API as the pages use it, and the sign-in form both pages share.
//
// Tokens live in this module's variables only: never in web storage or in a
// cookie, so nothing outlives the page and nothing but this code can read them back.
// A reload or another page means signing in again.

let accessToken = null;
let refreshToken = null;

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter; // seconds, on a 429
  }
}

async function send(method, path, { json, form, token } = {}) {
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // FormData: the browser writes the multipart boundary
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "network_error", "the server could not be reached");
  }
  if (response.ok) {
    const type = response.headers.get("Content-Type") || "";
    return type.includes("application/json") ? response.json() : response.blob();
  }
  let code = "http_" + response.status;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const error = (await response.json()).error;
    if (error) {
      code = error.code || code;
      message = error.message || message;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  const retryAfter = Number(response.headers.get("Retry-After")) || undefined;
  throw new ApiError(response.status, code, message, retryAfter);
}

// One refresh at a time, however many calls find the access token expired together.
let refreshing = null;

async function refreshAccess() {
  if (!refreshToken) return false;
  refreshing ||= send("POST", "/auth/refresh", { token: refreshToken })
    .then((body) => { accessToken = body.access_token; return true; })
    .catch(() => false)
    .finally(() => { refreshing = null; });
  return refreshing;
}

// A call with the access token; an expired one is refreshed once and the call repeated.
export async function api(method, path, options = {}) {
  try {
    return await send(method, path, { ...options, token: accessToken });
  } catch (err) {
    if (err.status === 401 && err.code === "token_expired" && await refreshAccess()) {
      return send(method, path, { ...options, token: accessToken });
    }
    throw err;
  }
}

export async function signIn(username, password) {
  const tokens = await send("POST", "/auth/login", { json: { username, password } });
  accessToken = tokens.access_token;
  refreshToken = tokens.refresh_token;
  return api("GET", "/auth/me");
}

export async function register(username, password) {
  await send("POST", "/auth/register", { json: { username, password } });
  return signIn(username, password);
}

export async function signOut() {
  if (accessToken) {
    try {
      await send("POST", "/auth/logout", { json: { refresh_token: refreshToken }, token: accessToken });
    } catch (_) {
      // revoked or expired already: forgetting the tokens is what matters here
    }
  }
  accessToken = null;
  refreshToken = null;
}

// A message for a failed call, from the API's own error body.
export function describe(err) {
  if (err instanceof ApiError) {
    if (err.status === 429) return `Too many requests: try again in ${err.retryAfter || "a few"} seconds.`;
    if (err.status === 0) return "The server could not be reached.";
    return err.message.charAt(0).toUpperCase() + err.message.slice(1) + ".";
  }
  return String(err);
}

export function $(id) {
  return document.getElementById(id);
}

export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function percent(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(100 * value).toFixed(digits)} %`;
}

export function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return date.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

// Wire the shared sign-in form; `accept(user)` decides whether the page opens (true) or
// says why not (a string).
export function setUpSignIn({ onSignedIn, accept = () => true }) {
  const form = $("sign-in-form");
  const status = $("auth-status");
  const registerButton = $("register");

  async function attempt(action) {
    const username = $("username").value.trim();
    const password = $("password").value;
    if (!username || !password) {
      status.textContent = "Enter a username and a password.";
      return;
    }
    status.textContent = action === "register" ? "Creating the account…" : "Signing in…";
    form.setAttribute("aria-busy", "true");
    try {
      const user = action === "register" ? await register(username, password) : await signIn(username, password);
      const verdict = accept(user);
      if (verdict !== true) {
        await signOut();
        status.textContent = verdict;
        return;
      }
      status.textContent = "";
      $("password").value = "";
      $("auth").hidden = true;
      $("account").hidden = false;
      $("who").textContent = user.username;
      await onSignedIn(user);
    } catch (err) {
      status.textContent = describe(err);
    } finally {
      form.removeAttribute("aria-busy");
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    attempt("login");
  });
  if (registerButton) registerButton.addEventListener("click", () => attempt("register"));
  $("sign-out").addEventListener("click", async () => {
    await signOut();
    window.location.reload(); // drops every piece of state the page held
  });
}
