// The admin page: model versions and rollback, retraining with its progress and gate
// verdict, feedback statistics as charts, the review queue, and the accounts.
import { $, ApiError, api, describe, el, percent, setUpSignIn, when } from "./api.js";

const POLL_MS = 1000;
const REVIEW_PER_PAGE = 10;
const ACCOUNTS_PER_PAGE = 20;
const SVG = "http://www.w3.org/2000/svg";

// Model versions ---------------------------------------------------------------------------

function keyMetrics(metrics) {
  const shown = [];
  const add = (name, value) => { if (typeof value === "number") shown.push(`${name} ${percent(value, 2)}`); };
  add("MNIST test", metrics.mnist_test_accuracy);
  add("held-out feedback", metrics.candidate?.feedback_holdout_accuracy);
  add("held-out digits", metrics.candidate?.replay_holdout_accuracy);
  return shown.join(", ") || "–";
}

async function loadModels() {
  const status = $("models-status");
  try {
    const body = await api("GET", "/admin/models");
    $("models").replaceChildren(...body.models.map((model) => {
      const action = model.active
        ? el("span", { class: "badge live", text: "live" })
        : el("button", {
          type: "button", class: "activate", "data-version": model.version,
          text: `Make ${model.version} live`, onclick: () => activate(model.version),
        });
      return el("tr", { "data-version": model.version, class: model.active ? "active" : null },
        el("th", { scope: "row", text: model.version }),
        el("td", { class: "model-status", text: model.status }),
        el("td", { class: "wide-only", text: model.parent_version || "–" }),
        el("td", {},
          keyMetrics(model.metrics || {}),
          el("details", {}, el("summary", { text: "all metrics" }),
            el("pre", { text: JSON.stringify(model.metrics, null, 1) }))),
        el("td", { class: "wide-only", text: when(model.created_at) }),
        el("td", {}, action));
    }));
    status.textContent = body.served_version && body.served_version !== body.active_version
      ? `This worker still serves ${body.served_version}; it follows ${body.active_version} within seconds.`
      : "";
  } catch (err) {
    status.textContent = describe(err);
  }
}

async function activate(version) {
  const status = $("models-status");
  status.textContent = `Making ${version} live…`;
  try {
    await api("POST", `/admin/models/${encodeURIComponent(version)}/activate`);
    status.textContent = "";
    await loadModels();
    status.textContent = `${version} is live; every worker follows within seconds.`;
    loadStats();
  } catch (err) {
    status.textContent = describe(err);
  }
}

// Retraining -----------------------------------------------------------------------------

let following = null;

function unfinished(job) {
  return job.status === "queued" || job.status === "running";
}

async function startRetrain() {
  const status = $("retrain-status");
  status.textContent = "Starting…";
  try {
    const job = await api("POST", "/admin/retrain", { json: { force: $("force").checked } });
    status.textContent = "";
    follow(job.job_id);
  } catch (err) {
    if (err.status === 409 && err.code === "retrain_in_progress") {
      status.textContent = "A job is already running: following it.";
      const running = (await api("GET", "/admin/retrain"))[0];
      if (running) follow(running.job_id);
      return;
    }
    status.textContent = describe(err);
  }
}

function follow(jobId) {
  following = jobId;
  $("retrain").disabled = true;
  $("gate").hidden = true;
  const poll = async () => {
    if (following !== jobId) return;
    let job;
    try {
      job = await api("GET", `/admin/retrain/${jobId}`);
    } catch (err) {
      $("retrain-status").textContent = describe(err);
      // A 429 says when to come back; other failures are retried at the usual pace.
      setTimeout(poll, err instanceof ApiError && err.retryAfter ? err.retryAfter * 1000 : POLL_MS);
      return;
    }
    showJob(job);
    if (unfinished(job)) setTimeout(poll, POLL_MS);
    else finished(job);
  };
  poll();
}

function showJob(job) {
  const progress = $("retrain-progress");
  const done = !unfinished(job);
  progress.value = done ? 1 : job.progress;
  progress.dataset.status = job.status;
  $("retrain-label").textContent = `Job ${job.job_id}: ${job.status}, ${Math.round(100 * (done ? 1 : job.progress))} %`;
}

function finished(job) {
  following = null;
  $("retrain").disabled = false;
  const outcome = {
    succeeded: `Job ${job.job_id} succeeded: ${job.model_version} is live.`,
    rejected: `Job ${job.job_id}: the gate kept ${job.base_version}; the candidate ${job.model_version || ""} is not served.`,
    failed: `Job ${job.job_id} failed: ${job.error || "no reason given"}.`,
  }[job.status] || `Job ${job.job_id}: ${job.status}.`;
  $("retrain-status").textContent = job.duration_seconds ? `${outcome} (${job.duration_seconds} s)` : outcome;
  showGate(job);
  loadModels();
  loadStats();
}

function showGate(job) {
  const gate = job.metrics?.gate;
  if (!gate) return;
  $("gate").hidden = false;
  $("gate-verdict").textContent = gate.passed ? "passed" : "failed";
  $("gate-verdict").className = gate.passed ? "ok" : "bad";
  $("gate-reasons").replaceChildren(...(gate.reasons || []).map((reason) => el("li", { text: reason })));
  const perDigit = gate.per_digit;
  $("gate-digits-wrap").hidden = !Array.isArray(perDigit);
  if (!Array.isArray(perDigit)) return;
  const points = (value) => (typeof value === "number" ? (100 * value).toFixed(1) : "–");
  $("gate-digits").replaceChildren(...perDigit.map((row) => el("tr", { class: row.passed ? null : "failed" },
    el("th", { scope: "row", text: row.digit }),
    el("td", { text: points(row.live) }),
    el("td", { text: points(row.candidate) }),
    el("td", { text: typeof row.drop_points === "number" ? row.drop_points.toFixed(2) : "–" }),
    el("td", { text: row.samples ?? "–" }),
    el("td", { class: row.passed ? "ok" : "bad", text: row.passed ? "passed" : "failed" }))));
}

async function loadLatestJob() {
  try {
    const [latest] = await api("GET", "/admin/retrain");
    if (!latest) return;
    if (unfinished(latest)) follow(latest.job_id);
    else {
      showJob(latest);
      $("retrain-status").textContent = `Last job ${latest.job_id}: ${latest.status}, ${when(latest.finished_at)}.`;
      showGate(latest);
    }
  } catch (err) {
    $("retrain-status").textContent = describe(err);
  }
}

// Statistics and charts ------------------------------------------------------------------------

function svg(tag, attributes = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function barChart(counts, label) {
  const width = 320, height = 160, bottom = 20, top = 14;
  const max = Math.max(1, ...counts);
  const step = width / counts.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "bars-chart" });
  counts.forEach((count, digit) => {
    const h = ((height - bottom - top) * count) / max;
    const x = digit * step + 4;
    chart.append(svg("rect", { x, y: height - bottom - h, width: step - 8, height: h, class: "bar-rect" }));
    chart.append(svg("text", { x: x + (step - 8) / 2, y: height - 5, "text-anchor": "middle", class: "axis" }, String(digit)));
    chart.append(svg("text", { x: x + (step - 8) / 2, y: height - bottom - h - 3, "text-anchor": "middle", class: "value" }, String(count)));
  });
  return chart;
}

function lineChart(days, series, label) {
  const width = 320, height = 160, left = 34, bottom = 20, top = 8, right = 8;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "line-chart" });
  const x = (i) => left + (days.length === 1 ? (width - left - right) / 2 : (i * (width - left - right)) / (days.length - 1));
  const y = (rate) => top + (1 - rate) * (height - top - bottom);
  for (const tick of [0, 0.5, 1]) {
    chart.append(svg("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), class: "grid" }));
    chart.append(svg("text", { x: left - 4, y: y(tick) + 4, "text-anchor": "end", class: "axis" }, `${tick * 100}%`));
  }
  chart.append(svg("text", { x: left, y: height - 4, class: "axis" }, days[0]));
  if (days.length > 1) chart.append(svg("text", { x: width - right, y: height - 4, "text-anchor": "end", class: "axis" }, days.at(-1)));
  series.forEach((line, index) => {
    const points = line.points.map(([day, rate]) => `${x(days.indexOf(day))},${y(rate)}`);
    const cls = `series series-${index % 6}`;
    if (points.length > 1) chart.append(svg("polyline", { points: points.join(" "), class: cls, fill: "none" }));
    for (const [day, rate] of line.points) {
      chart.append(svg("circle", { cx: x(days.indexOf(day)), cy: y(rate), r: 3, class: cls },));
    }
  });
  return chart;
}

function renderErrorChart(byDay) {
  const target = $("chart-errors");
  if (!byDay || !byDay.length) {
    target.replaceChildren(el("p", { class: "hint", text: "No labels on predictions yet." }));
    return;
  }
  const days = [...new Set(byDay.map((row) => row.day))].sort();
  const versions = [...new Set(byDay.map((row) => row.model_version))];
  const series = versions.map((version) => ({
    version, points: byDay.filter((row) => row.model_version === version).map((row) => [row.day, row.error_rate]),
  }));
  const summary = series.map((s) => `${s.version}: ${s.points.map(([d, r]) => `${d} ${percent(r)}`).join(", ")}`).join("; ");
  const legend = el("ul", { class: "legend plain" }, ...series.map((s, index) =>
    el("li", {}, el("span", { class: `swatch series-${index % 6}`, "aria-hidden": "true" }), s.version)));
  target.replaceChildren(lineChart(days, series, `Error rate by day. ${summary}`), legend);
}

async function loadStats() {
  const status = $("stats-status");
  status.textContent = "Loading…"; // the first call computes the live model's drift reference
  let stats;
  try {
    stats = await api("GET", "/admin/stats");
  } catch (err) {
    status.textContent = describe(err);
    return;
  }
  const feedback = stats.feedback;
  status.textContent = "";
  $("stat-total").textContent = feedback.total;
  $("stat-new").textContent = feedback.since_last_retrain;
  $("stat-live").textContent = feedback.live_model_version || "–";
  $("stat-error").textContent = feedback.live_model_error_rate === null
    ? "no labels yet" : `${percent(feedback.live_model_error_rate)} of ${feedback.live_model_feedback}`;
  const counts = Array.from({ length: 10 }, (_, digit) => feedback.per_label[String(digit)] || 0);
  $("chart-digits").replaceChildren(barChart(counts,
    `Feedback samples per digit: ${counts.map((c, d) => `${d}: ${c}`).join(", ")}`));
  $("chart-digits").dataset.counts = counts.join(",");
  renderErrorChart(stats.feedback_by_day);

  const rows = stats.versions;
  $("versions").replaceChildren(...rows.map((row) => el("tr", { "data-version": row.model_version },
    el("th", { scope: "row", text: row.model_version }),
    el("td", { text: row.predictions ?? "–" }),
    el("td", { class: "feedback", text: row.feedback }),
    el("td", { class: "wrong", text: row.wrong }),
    el("td", { text: percent(row.error_rate) }))));
  if (!rows.length) $("versions").append(el("tr", {}, el("td", { colspan: 5, text: "No labels on predictions yet." })));
}

// Review queue -------------------------------------------------------------------------------

const review = { queue: "quarantined", page: 1, urls: [] };

function digitSelect(id, selected) {
  return el("select", { id, "aria-label": "Digit" },
    ...Array.from({ length: 10 }, (_, d) => el("option", { value: d, selected: d === selected, text: String(d) })));
}

async function showImage(img, url) {
  try {
    const blob = await api("GET", url); // the admin's token is needed: no plain <img src>
    const objectUrl = URL.createObjectURL(blob);
    review.urls.push(objectUrl);
    img.src = objectUrl;
  } catch (err) {
    img.alt = `image: ${describe(err)}`;
  }
}

function reviewItem(item) {
  const img = el("img", { class: "sample", width: 84, height: 84, alt: `Image of item ${item.feedback_id ?? item.prediction_id}` });
  if (item.image_url) showImage(img, item.image_url);
  if (review.queue === "quarantined") {
    const id = item.feedback_id;
    const detail = item.detail ? ` ${JSON.stringify(item.detail)}` : "";
    return el("li", { class: "review-item", "data-feedback-id": id },
      el("input", { type: "checkbox", class: "pick", id: `pick-${id}`, value: id }),
      el("label", { for: `pick-${id}`, class: "visually-hidden", text: `Select feedback ${id}` }),
      img,
      el("div", { class: "about" },
        el("p", {}, el("strong", { text: `Labelled ${item.label}` }),
          ` by ${item.username ?? "a deleted account"}; model ${item.model_version ?? "–"} said `
          + `${item.predicted ?? "–"} (${percent(item.confidence)})`),
        el("p", { class: "hint", text: `${item.reason || item.status}${detail} · ${when(item.created_at)}` }),
        el("div", { class: "row" },
          el("button", { type: "button", text: "Accept", onclick: () => act(`/admin/review/feedback/${id}`, { action: "accept" }) }),
          el("button", { type: "button", text: "Reject", onclick: () => act(`/admin/review/feedback/${id}`, { action: "reject" }) }),
          digitSelect(`relabel-${id}`, item.label),
          el("button", {
            type: "button", text: "Relabel",
            onclick: () => act(`/admin/review/feedback/${id}`, { action: "relabel", label: Number($(`relabel-${id}`).value) }),
          }))));
  }
  const id = item.prediction_id;
  return el("li", { class: "review-item", "data-prediction-id": id },
    img,
    el("div", { class: "about" },
      el("p", {}, el("strong", { text: `Model said ${item.predicted} (${percent(item.confidence)})` }),
        ` · ${item.model_version} · ${item.username ?? "a deleted account"}`),
      el("p", { class: "hint", text: when(item.created_at) }),
      el("div", { class: "row" },
        digitSelect(`label-${id}`, item.predicted),
        el("button", {
          type: "button", text: "Label",
          onclick: () => act(`/admin/review/predictions/${id}`, { label: Number($(`label-${id}`).value) }),
        }))));
}

async function loadReview() {
  const status = $("review-status");
  for (const url of review.urls.splice(0)) URL.revokeObjectURL(url);
  $("queue-quarantined").setAttribute("aria-pressed", String(review.queue === "quarantined"));
  $("queue-uncertain").setAttribute("aria-pressed", String(review.queue === "uncertain"));
  try {
    const body = await api("GET", `/admin/review?queue=${review.queue}&page=${review.page}&per_page=${REVIEW_PER_PAGE}`);
    $("review").replaceChildren(...body.items.map(reviewItem));
    status.textContent = body.total ? `${body.total} waiting.` : "Nothing to review.";
    $("review-page").textContent = body.pages ? `Page ${body.page} of ${body.pages}` : "";
    $("review-prev").disabled = body.page <= 1;
    $("review-next").disabled = body.page >= body.pages;
    $("bulk").hidden = review.queue !== "quarantined" || !body.items.length;
  } catch (err) {
    $("review").replaceChildren();
    $("bulk").hidden = true;
    $("review-prev").disabled = true;
    $("review-next").disabled = true;
    $("review-page").textContent = "";
    status.textContent = describe(err);
    return;
  }
  $("review").dataset.loaded = "true";
}

async function act(path, body) {
  const status = $("review-status");
  status.textContent = "Saving…";
  try {
    await api("POST", path, { json: body });
    await loadReview();
    loadStats();
  } catch (err) {
    status.textContent = describe(err);
  }
}

async function bulk(action) {
  const ids = [...document.querySelectorAll("#review .pick:checked")].map((box) => Number(box.value));
  if (!ids.length) {
    $("review-status").textContent = "Select some feedback first.";
    return;
  }
  await act("/admin/review/bulk", { action, feedback_ids: ids });
}

// Accounts -------------------------------------------------------------------------------------

// `active`: "" for every account, "true" or "false" for one kind (the API's ?active=).
const accounts = { active: "", page: 1, me: null };

function accountRow(user) {
  const name = user.id === accounts.me ? `${user.username} (you)` : user.username;
  const activeText = user.active ? "active" : "inactive";
  // The username is in the button's name too: a screen reader's list of buttons says whose it is.
  const toggle = el("button", {
    type: "button", class: "toggle-active", "data-user-id": user.id,
    onclick: () => setActive(user, !user.active),
  }, user.active ? "Deactivate" : "Activate", el("span", { class: "visually-hidden", text: ` ${user.username}` }));
  return el("tr", { "data-user-id": user.id, "data-username": user.username, class: user.active ? null : "inactive" },
    // On a phone the status goes under the name: the table has room for three columns only.
    el("th", { scope: "row" }, name, el("span", { class: "narrow-only hint", text: activeText })),
    el("td", { class: "wide-only", text: user.role }),
    el("td", { class: "wide-only account-active", text: activeText }),
    el("td", { class: "wide-only", text: when(user.created_at) }),
    el("td", { class: "count wide-only accepted", text: user.feedback.accepted }),
    el("td", { class: "count wide-only quarantined", text: user.feedback.quarantined }),
    el("td", { class: "count wide-only rejected", text: user.feedback.rejected }),
    // A phone has no room for three number columns: the same counts, one per line, with their words.
    el("td", { class: "narrow-only labels" }, el("ul", { class: "plain" },
      ...["accepted", "quarantined", "rejected"].map((kind) => el("li", { text: `${user.feedback[kind]} ${kind}` })))),
    el("td", {}, toggle));
}

async function loadAccounts() {
  const status = $("accounts-status");
  for (const button of document.querySelectorAll("#accounts-filter button")) {
    button.setAttribute("aria-pressed", String(button.dataset.active === accounts.active));
  }
  const filter = accounts.active ? `&active=${accounts.active}` : "";
  try {
    const body = await api("GET", `/admin/users?page=${accounts.page}&per_page=${ACCOUNTS_PER_PAGE}${filter}`);
    if (!body.items.length && body.pages && body.page > body.pages) {
      accounts.page = body.pages; // the last page's only row just left this filter
      return loadAccounts();
    }
    $("accounts").replaceChildren(...body.items.map(accountRow));
    if (!body.items.length) {
      $("accounts").append(el("tr", {}, el("td", { colspan: 9, text: "No accounts here." })));
    }
    $("accounts-page").textContent = body.pages ? `Page ${body.page} of ${body.pages}` : "";
    $("accounts-prev").disabled = body.page <= 1;
    $("accounts-next").disabled = body.page >= body.pages;
    $("accounts").dataset.total = body.total;
  } catch (err) {
    $("accounts").replaceChildren();
    $("accounts-prev").disabled = true;
    $("accounts-next").disabled = true;
    $("accounts-page").textContent = "";
    status.textContent = describe(err);
    return false;
  }
  return true;
}

// No confirmation dialog: like a rollback or a rejected label, it is one click, said in the status line
// and undone by the button that takes its place (which gets the focus the clicked one had).
async function setActive(user, active) {
  const status = $("accounts-status");
  status.textContent = `${active ? "Activating" : "Deactivating"} ${user.username}…`;
  let changed;
  try {
    changed = await api("PATCH", `/admin/users/${user.id}`, { json: { active } });
  } catch (err) {
    status.textContent = describe(err); // 409 cannot_deactivate_self / last_admin say why themselves
    return;
  }
  if (!await loadAccounts()) return;
  status.textContent = changed.active
    ? `${changed.username} is active again: they can sign in (the tokens they had stay refused), and their labels count.`
    : `${changed.username} is deactivated: their tokens are refused and their labels left out of training.`;
  const again = document.querySelector(`#accounts button.toggle-active[data-user-id="${changed.id}"]`);
  (again || $("accounts-title")).focus();
  loadStats(); // a deactivated account's labels leave the counts that training uses
}

function filterAccounts(active) {
  accounts.active = active;
  accounts.page = 1;
  $("accounts-status").textContent = "";
  loadAccounts();
}

// Start ---------------------------------------------------------------------------------------

$("retrain").addEventListener("click", startRetrain);
$("bulk-accept").addEventListener("click", () => bulk("accept"));
$("bulk-reject").addEventListener("click", () => bulk("reject"));
$("queue-quarantined").addEventListener("click", () => { review.queue = "quarantined"; review.page = 1; loadReview(); });
$("queue-uncertain").addEventListener("click", () => { review.queue = "uncertain"; review.page = 1; loadReview(); });
$("review-prev").addEventListener("click", () => { review.page = Math.max(1, review.page - 1); loadReview(); });
$("review-next").addEventListener("click", () => { review.page += 1; loadReview(); });
for (const button of document.querySelectorAll("#accounts-filter button")) {
  button.addEventListener("click", () => filterAccounts(button.dataset.active));
}
$("accounts-prev").addEventListener("click", () => { accounts.page = Math.max(1, accounts.page - 1); loadAccounts(); });
$("accounts-next").addEventListener("click", () => { accounts.page += 1; loadAccounts(); });

setUpSignIn({
  accept: (user) => user.role === "admin" || `${user.username} is not an admin: this page needs the admin role.`,
  onSignedIn: async (user) => {
    $("console").hidden = false;
    accounts.me = user.id;
    await Promise.all([loadModels(), loadStats(), loadLatestJob(), loadReview(), loadAccounts()]);
  },
});
