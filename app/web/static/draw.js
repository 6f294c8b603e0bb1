// The drawing page: a canvas driven by pointer events (mouse, pen, touch), files and
// photos, the model's answer with its ten probabilities, one-click corrections, history.
import { $, api, describe, el, percent, setUpSignIn, when } from "./api.js";

const INK = "#000";
const PAPER = "#fff";
const HISTORY_SIZE = 10;

const pad = $("pad");
const ctx = pad.getContext("2d");
const strokes = []; // each stroke: [[x, y], ...] in canvas pixels
let current = null;
let lastPrediction = null;
let inflight = false;
let pending = null; // the newest request asked for while one was in flight
let previewUrl = null;
const history = [];

// Drawing ------------------------------------------------------------------------------

function lineWidth() {
  return pad.width / 13; // about the stroke of an MNIST digit once scaled to 28x28
}

function paint() {
  ctx.fillStyle = PAPER;
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = INK;
  ctx.fillStyle = INK;
  ctx.lineWidth = lineWidth();
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of strokes) {
    if (stroke.length === 1) {
      ctx.beginPath();
      ctx.arc(stroke[0][0], stroke[0][1], lineWidth() / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    ctx.beginPath();
    ctx.moveTo(...stroke[0]);
    for (const point of stroke.slice(1)) ctx.lineTo(...point);
    ctx.stroke();
  }
}

function point(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

pad.addEventListener("pointerdown", (event) => {
  if (event.pointerType === "mouse" && event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  current = { id: event.pointerId, points: [point(event)] };
  strokes.push(current.points);
  paint();
});

pad.addEventListener("pointermove", (event) => {
  if (!current || event.pointerId !== current.id) return;
  event.preventDefault();
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) current.points.push(point(e));
  paint();
});

function endStroke(event) {
  if (!current || event.pointerId !== current.id) return;
  current = null;
  paint();
  // The event's time is on the same clock as performance.now(): the answer's delay is
  // measured from the moment the finger or pen left the surface.
  predict(drawingUpload(), event.timeStamp);
}

pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  strokes.pop();
  paint();
  if (strokes.length) predict(drawingUpload(), performance.now());
  else clearResult();
}

function clear() {
  strokes.length = 0;
  paint();
  clearResult();
}

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clear);
$("predict").addEventListener("click", () => {
  if (!strokes.length) {
    $("result-status").textContent = "Draw a digit first, or pick an image.";
    return;
  }
  predict(drawingUpload(), performance.now());
});
document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement?.tagName);
  if ((event.ctrlKey || event.metaKey) && event.key === "z" && !typing && !$("workspace").hidden) {
    event.preventDefault();
    undo();
  }
});

// What is sent ---------------------------------------------------------------------------

function drawingUpload() {
  // Dark ink on white paper, as a photo or a scan would be.
  return new Promise((resolve) => pad.toBlob((blob) => resolve({ blob, name: "drawing.png" }), "image/png"));
}

function fileUpload(file) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;
  $("preview").hidden = false;
  return Promise.resolve({ blob: file, name: file.name || "upload" });
}

for (const id of ["file", "camera"]) {
  $(id).addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) predict(fileUpload(file), performance.now());
    event.target.value = ""; // the same file again is a new choice
  });
}

const zone = $("drop-zone");
zone.addEventListener("dragover", (event) => {
  event.preventDefault();
  zone.classList.add("dragging");
});
zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
zone.addEventListener("drop", (event) => {
  event.preventDefault();
  zone.classList.remove("dragging");
  const [file] = event.dataTransfer.files;
  if (file) predict(fileUpload(file), performance.now());
});

// Asking the model -------------------------------------------------------------------------

async function predict(upload, startedAt) {
  if (inflight) {
    pending = { upload, startedAt }; // only the newest drawing matters
    return;
  }
  inflight = true;
  $("result").setAttribute("aria-busy", "true");
  $("result-status").textContent = "Asking the model…";
  try {
    const { blob, name } = await upload;
    const form = new FormData();
    form.append("file", blob, name);
    const answer = await api("POST", "/api/v2/predict", { form });
    showPrediction(answer, startedAt);
  } catch (err) {
    $("result-status").textContent = describe(err);
  } finally {
    inflight = false;
    $("result").removeAttribute("aria-busy");
    if (pending) {
      const next = pending;
      pending = null;
      predict(next.upload, next.startedAt);
    }
  }
}

function showPrediction(answer, startedAt) {
  lastPrediction = answer;
  $("digit").textContent = String(answer.prediction);
  $("confidence").textContent = `${percent(answer.confidence)} sure`;
  $("version").textContent = answer.model_version;
  const bars = $("bars");
  bars.replaceChildren();
  answer.probabilities.forEach((p, digit) => {
    const fill = el("span", { class: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`; // CSSOM, not an inline style attribute: CSP allows it
    bars.append(el("li", { class: digit === answer.prediction ? "predicted" : null },
      el("button", {
        type: "button", class: "choice", "data-digit": digit, "aria-pressed": "false",
        "aria-label": `It was a ${digit} (model: ${percent(p)})`, onclick: () => sendFeedback(digit),
      }, String(digit)),
      el("span", { class: "bar", "aria-hidden": "true" }, fill),
      el("span", { class: "pct", text: percent(p) })));
  });
  $("choices").disabled = false;
  $("result").dataset.predictionId = String(answer.prediction_id);
  $("result-status").textContent = `The model says ${answer.prediction}.`;
  // After the DOM holds the answer: what the user waited from the end of the stroke.
  const elapsed = performance.now() - startedAt;
  $("result").dataset.elapsedMs = elapsed.toFixed(1);
  $("timing").textContent = `Answered ${Math.round(elapsed)} ms after the stroke ended.`;
  addToHistory({
    prediction_id: answer.prediction_id, prediction: answer.prediction, confidence: answer.confidence,
    model_version: answer.model_version, created_at: new Date().toISOString(), feedback_label: null,
  });
}

function clearResult() {
  lastPrediction = null;
  $("digit").textContent = "–";
  $("confidence").textContent = "";
  $("version").textContent = "–";
  $("timing").textContent = "";
  $("bars").replaceChildren();
  $("choices").disabled = true;
  delete $("result").dataset.predictionId;
  $("result-status").textContent = "";
}

async function sendFeedback(label) {
  if (!lastPrediction) return;
  const prediction = lastPrediction;
  $("result-status").textContent = "Sending…";
  try {
    await api("POST", "/api/v2/feedback", { json: { prediction_id: prediction.prediction_id, label } });
    for (const button of $("bars").querySelectorAll("button")) {
      button.setAttribute("aria-pressed", String(Number(button.dataset.digit) === label));
    }
    $("result-status").textContent = label === prediction.prediction
      ? `Thanks: you confirmed ${label}.`
      : `Thanks: recorded as ${label} (the model said ${prediction.prediction}).`;
    const row = history.find((item) => item.prediction_id === prediction.prediction_id);
    if (row) row.feedback_label = label;
    renderHistory();
    loadFeedback();
  } catch (err) {
    $("result-status").textContent = describe(err);
  }
}

// History ----------------------------------------------------------------------------------

function addToHistory(item) {
  history.unshift(item);
  history.length = Math.min(history.length, HISTORY_SIZE);
  renderHistory();
}

function renderHistory() {
  const body = $("predictions");
  body.replaceChildren(...history.map((item) => el("tr", { "data-prediction-id": item.prediction_id },
    el("td", { class: "wide-only", text: item.prediction_id }),
    el("td", { text: when(item.created_at) }),
    el("td", { text: item.prediction }),
    el("td", { text: percent(item.confidence) }),
    el("td", { class: "wide-only", text: item.model_version }),
    el("td", { class: "label", text: item.feedback_label ?? "–" }))));
  if (!history.length) body.append(el("tr", {}, el("td", { colspan: 6, text: "Nothing yet." })));
}

async function loadPredictions() {
  const page = await api("GET", `/api/v2/predictions?per_page=${HISTORY_SIZE}`);
  history.splice(0, history.length, ...page.items);
  renderHistory();
}

async function loadFeedback() {
  try {
    const page = await api("GET", `/api/v2/feedback?per_page=${HISTORY_SIZE}`);
    const list = $("feedback");
    list.replaceChildren(...page.items.map((item) => el("li", {
      text: item.prediction_id
        ? `${when(item.created_at)}: prediction #${item.prediction_id} is a ${item.label} (model said ${item.predicted})`
        : `${when(item.created_at)}: an uploaded ${item.label}`,
    })));
    if (!page.items.length) list.append(el("li", { text: "No feedback yet." }));
    list.dataset.total = String(page.total);
  } catch (err) {
    $("feedback").replaceChildren(el("li", { text: describe(err) }));
  }
}

paint();
setUpSignIn({
  onSignedIn: async () => {
    $("workspace").hidden = false;
    pad.focus();
    try {
      await loadPredictions();
    } catch (err) {
      $("predictions").replaceChildren(el("tr", {}, el("td", { colspan: 6, text: describe(err) })));
    }
    await loadFeedback();
  },
});
