// chex serve: choose an image, type prompts and/or mark boxes, press Explain, show the answer.
// Boxes are kept in pixels of the original image; the preview may be smaller.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, boxes: [], corner: null, drag: null, cursor: null, maxUpload: 0, busy: false,
                job: null };

function show(id, visible) { $(id).hidden = !visible; }
function setError(id, message) { $(id).textContent = message || ""; show(id, Boolean(message)); }

async function call(url, options) {
  // fetch -> parsed JSON; throws Error(one readable line) on any failure
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("cannot reach chex serve: is it still running?");
  }
  let data = null;
  try { data = await response.json(); } catch (err) { /* not JSON */ }
  if (!response.ok) {
    throw new Error((data && data.error) || `the request failed (HTTP ${response.status})`);
  }
  return data;
}

// ------------------------------------------------------------------ step 1: the image
async function loadInfo() {
  try {
    const info = await call("/api/info");
    $("model-name").textContent = info.model;
    state.maxUpload = info.max_upload_bytes;
    $("drop-hint").textContent = `PNG, JPEG or DICOM, up to ${Math.round(info.max_upload_bytes / 1048576)} MB`;
    for (const ex of info.examples) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "example";
      const thumb = document.createElement("img");
      thumb.src = ex.thumbnail;
      thumb.alt = "";  // the label names the example
      const label = document.createElement("span");
      label.textContent = ex.label;
      button.append(thumb, label);
      button.title = ex.title;
      button.dataset.example = ex.name;
      button.addEventListener("click", () => openImage(`/api/example?name=${encodeURIComponent(ex.name)}`, null));
      $("example-buttons").appendChild(button);
    }
  } catch (err) {
    setError("image-error", err.message);
  }
}

async function uploadFile(file) {
  if (!file) return;
  if (state.maxUpload && file.size > state.maxUpload) {
    setError("image-error", `${file.name}: the file is ${(file.size / 1048576).toFixed(1)} MB; ` +
      `the limit is ${Math.round(state.maxUpload / 1048576)} MB`);
    return;
  }
  await openImage("/api/upload", file);
}

async function openImage(url, file) {
  setError("image-error", "");
  setError("ask-error", "");
  const options = { method: "POST", body: file || "" };
  if (file) options.headers = { "X-File-Name": encodeURIComponent(file.name), "Content-Type": "application/octet-stream" };
  $("drop").classList.add("over");
  try {
    const data = await call(url, options);
    state.image = data.image;
    state.boxes = [];
    state.corner = null;
    state.cursor = null;
    const img = $("preview");
    img.onload = () => { sizeCanvas(); draw(); };
    img.src = `/api/image/${data.image.id}.png`;
    show("viewer", true);
    show("viewer-empty", false);
    const [cx, cy, side] = data.image.crop;
    let caption = `${data.image.name}: ${data.image.width} × ${data.image.height} pixels. ` +
      "Drag on the image to mark a box, or click two corners.";
    if (cx || cy) caption += " The model sees the centre square; the shaded parts are cropped away.";
    $("image-caption").textContent = caption;
    renderBoxes();
  } catch (err) {
    setError("image-error", err.message);
  } finally {
    $("drop").classList.remove("over");
    $("file").value = "";
    updateButton();
  }
}

// ------------------------------------------------------------------ boxes on the image
function sizeCanvas() {
  const canvas = $("overlay");
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(canvas.clientWidth * ratio);
  canvas.height = Math.round(canvas.clientHeight * ratio);
}

function toImage(event) {
  // pointer position -> pixel of the original image (clamped to the image)
  const canvas = $("overlay");
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) / rect.width * state.image.width;
  const y = (event.clientY - rect.top) / rect.height * state.image.height;
  return [Math.min(Math.max(x, 0), state.image.width), Math.min(Math.max(y, 0), state.image.height)];
}

function addBox(a, b) {
  const box = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[0], b[0]), Math.max(a[1], b[1])].map(Math.round);
  if (box[2] - box[0] < 2 || box[3] - box[1] < 2) return;
  state.boxes.push(box);
  renderBoxes();
}

function draw() {
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.image) return;
  const sx = canvas.width / state.image.width, sy = canvas.height / state.image.height;
  const [cx, cy, side] = state.image.crop;
  ctx.fillStyle = "rgba(0, 0, 0, 0.45)";  // what the centre crop removes
  if (cx) { ctx.fillRect(0, 0, cx * sx, canvas.height); ctx.fillRect((cx + side) * sx, 0, canvas.width, canvas.height); }
  if (cy) { ctx.fillRect(0, 0, canvas.width, cy * sy); ctx.fillRect(0, (cy + side) * sy, canvas.width, canvas.height); }
  const line = Math.max(2, canvas.width / 300);
  const font = Math.max(12, Math.round(canvas.width / 35));
  ctx.font = `bold ${font}px system-ui, sans-serif`;
  const boxes = state.boxes.map((b, i) => [b, `B${i + 1}`]);
  if (state.drag && state.drag.moved) boxes.push([[...state.drag.start, ...state.drag.end], ""]);
  for (const [b, label] of boxes) {
    const x = Math.min(b[0], b[2]) * sx, y = Math.min(b[1], b[3]) * sy;
    const w = Math.abs(b[2] - b[0]) * sx, h = Math.abs(b[3] - b[1]) * sy;
    ctx.lineWidth = line;
    ctx.setLineDash([]);
    ctx.strokeStyle = "#ff3ea5";
    ctx.strokeRect(x, y, w, h);
    if (label) {
      const tw = ctx.measureText(label).width + 8;
      ctx.fillStyle = "#ff3ea5";
      ctx.fillRect(x, Math.max(0, y - font - 4), tw, font + 4);
      ctx.fillStyle = "#fff";
      ctx.fillText(label, x + 4, Math.max(font, y - 4));
    }
  }
  if (state.corner) {  // first corner of a two-click box
    const [x, y] = [state.corner[0] * sx, state.corner[1] * sy];
    ctx.strokeStyle = "#ff3ea5";
    ctx.lineWidth = line;
    ctx.beginPath();
    ctx.moveTo(x - 10 * line, y); ctx.lineTo(x + 10 * line, y);
    ctx.moveTo(x, y - 10 * line); ctx.lineTo(x, y + 10 * line);
    ctx.stroke();
  }
  if (state.cursor && document.activeElement === canvas) {  // the keyboard cursor
    const [x, y] = [state.cursor[0] * sx, state.cursor[1] * sy];
    if (state.corner) {  // the box it would make
      const [fx, fy] = [state.corner[0] * sx, state.corner[1] * sy];
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = "#ff3ea5";
      ctx.strokeRect(Math.min(x, fx), Math.min(y, fy), Math.abs(x - fx), Math.abs(y - fy));
      ctx.setLineDash([]);
    }
    ctx.strokeStyle = "#ffd400";
    ctx.lineWidth = line;
    ctx.beginPath();
    ctx.arc(x, y, 6 * line, 0, 2 * Math.PI);
    ctx.moveTo(x - 10 * line, y); ctx.lineTo(x + 10 * line, y);
    ctx.moveTo(x, y - 10 * line); ctx.lineTo(x, y + 10 * line);
    ctx.stroke();
  }
}

function renderBoxes() {
  const list = $("box-list");
  list.innerHTML = "";
  if (!state.boxes.length && !state.corner) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "No boxes yet.";
    list.appendChild(li);
  }
  state.boxes.forEach((b, i) => {
    const li = document.createElement("li");
    const tag = document.createElement("span");
    tag.className = "tag";
    tag.textContent = `B${i + 1}`;
    const text = document.createElement("span");
    text.textContent = `${b[0]}, ${b[1]} – ${b[2]}, ${b[3]} px`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "remove";
    remove.setAttribute("aria-label", `Remove box B${i + 1}`);
    remove.addEventListener("click", () => { state.boxes.splice(i, 1); renderBoxes(); });
    li.append(tag, text, remove);
    list.appendChild(li);
  });
  if (state.corner) {
    const li = document.createElement("li");
    li.className = "empty";
    li.textContent = "First corner set: click the opposite corner (Esc cancels).";
    list.appendChild(li);
  }
  draw();
  updateButton();
}

function bindCanvas() {
  const canvas = $("overlay");
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.image) return;
    canvas.setPointerCapture(event.pointerId);
    const p = toImage(event);
    state.drag = { start: p, end: p, moved: false, x: event.clientX, y: event.clientY };
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!state.drag) return;
    state.drag.end = toImage(event);
    state.drag.moved = state.drag.moved || Math.hypot(event.clientX - state.drag.x, event.clientY - state.drag.y) > 5;
    draw();
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!state.drag) return;
    const drag = state.drag;
    state.drag = null;
    if (drag.moved) {  // a drag draws a box
      state.corner = null;
      addBox(drag.start, toImage(event));
    } else if (state.corner) {  // second click: the opposite corner
      const first = state.corner;
      state.corner = null;
      addBox(first, drag.start);
    } else {  // first click
      state.corner = drag.start;
    }
    renderBoxes();
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.corner) { state.corner = null; renderBoxes(); }
  });
  canvas.addEventListener("keydown", keyboardBox);
  canvas.addEventListener("focus", () => {
    if (state.image && !state.cursor) state.cursor = [state.image.width / 2, state.image.height / 2];
    announceCursor();
    draw();
  });
  canvas.addEventListener("blur", draw);
  window.addEventListener("resize", () => { if (state.image) { sizeCanvas(); draw(); } });
}

const ARROWS = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };

function keyboardBox(event) {
  // Arrow keys move a cursor over the image (1 % of its size a step, 10 % with Shift); Enter or Space
  // marks a corner, the second corner adds the box; Escape (handled above) forgets a first corner.
  if (!state.image) return;
  const step = ARROWS[event.key];
  if (step) {
    event.preventDefault();
    const scale = (event.shiftKey ? 0.1 : 0.01);
    const [w, h] = [state.image.width, state.image.height];
    const [x, y] = state.cursor || [w / 2, h / 2];
    state.cursor = [Math.min(Math.max(x + step[0] * scale * w, 0), w), Math.min(Math.max(y + step[1] * scale * h, 0), h)];
    announceCursor();
    draw();
  } else if ((event.key === "Enter" || event.key === " ") && state.cursor) {
    event.preventDefault();
    if (state.corner) {
      const first = state.corner;
      state.corner = null;
      addBox(first, state.cursor);
    } else {
      state.corner = state.cursor;
    }
    renderBoxes();
    announceCursor();
  }
}

function announceCursor() {
  if (!state.cursor) { $("cursor-position").textContent = ""; return; }
  const [x, y] = state.cursor.map(Math.round);
  let text = `Cursor at ${x}, ${y} px.`;
  if (state.corner) text += ` First corner at ${state.corner.map(Math.round).join(", ")} px: Enter marks the opposite corner.`;
  $("cursor-position").textContent = text;
}

// ------------------------------------------------------------------ step 2 and 3: ask, show
function prompts() {
  return $("prompts").value.split("\n").map((p) => p.trim()).filter((p) => p);
}

function updateButton() {
  const ready = Boolean(state.image) && !state.busy;
  const hasQuery = prompts().length > 0 || state.boxes.length > 0 || $("report").checked;
  $("explain").disabled = !ready || !hasQuery;
  let hint = "";
  if (!state.image) hint = "Choose an X-ray first.";
  else if (!hasQuery) hint = "Type a prompt, mark a box on the X-ray, or tick the full report.";
  else if (!state.busy) hint = "Ctrl+Enter in the prompt box also works.";
  $("ask-hint").textContent = hint;
}

function newTicket() {
  // identifies this question in the queue; random, so other tabs cannot guess it
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function setStatus(text) {
  // the live region changes only when the state changes (not with the seconds counter)
  if ($("status").textContent !== text) $("status").textContent = text;
}

async function followQueue(job) {
  // ask the server where the question stands until it is answered
  while (state.job === job) {
    try {
      const where = await call(`/api/queue?ticket=${job.ticket}`);
      if (state.job !== job) return;
      if (where.position === 0) setStatus("The model is working on your question…");
      else if (where.position > 0) setStatus(`Waiting: ${where.position} ${where.position === 1 ? "question" : "questions"} ahead of yours.`);
    } catch (err) { /* the answer itself will report a lost server */ }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

async function explain() {
  if ($("explain").disabled) return;
  setError("ask-error", "");
  state.busy = true;
  updateButton();
  const job = { ticket: newTicket(), controller: new AbortController(), started: Date.now() };
  state.job = job;
  setStatus("Sending your question…");
  show("waiting", true);
  const tick = () => { $("elapsed").textContent = `${Math.round((Date.now() - job.started) / 1000)} s`; };
  tick();
  const timer = setInterval(tick, 1000);
  followQueue(job);
  try {
    const answer = await call("/api/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: state.image.id, prompts: prompts(), boxes: state.boxes,
                             report: $("report").checked, ticket: job.ticket }),
      signal: job.controller.signal,
    });
    if (state.job === job) renderAnswer(answer);
  } catch (err) {
    if (!job.controller.signal.aborted) setError("ask-error", err.message);
  } finally {
    clearInterval(timer);
    if (state.job === job) {
      state.job = null;
      show("waiting", false);
      state.busy = false;
      updateButton();
    }
  }
}

async function cancel() {
  const job = state.job;
  if (!job) return;
  state.job = null;
  job.controller.abort();  // the server drops a question whose client has gone
  show("waiting", false);
  state.busy = false;
  updateButton();
  setError("ask-error", "Cancelled.");
  try { await call(`/api/cancel?ticket=${job.ticket}`, { method: "POST" }); } catch (err) { /* gone already */ }
}

function renderAnswer(answer) {
  show("results-empty", false);
  show("results", true);
  $("annotated").src = answer.png_url;
  $("dl-png").href = `${answer.png_url}?download=1`;
  $("dl-json").href = `${answer.json_url}?download=1`;
  $("json").textContent = JSON.stringify(answer.record);
  show("report-box", Boolean(answer.report !== null && answer.report !== undefined));
  $("report-text").textContent = answer.report || "(no sentence was selected for the report)";
  const dashed = answer.rows.filter((row) => row.best);
  show("dashed-note", dashed.length > 0);
  $("annotated").alt = annotatedAlt(dashed);
  const body = $("table").querySelector("tbody");
  body.innerHTML = "";
  for (const row of answer.rows) {
    const tr = document.createElement("tr");
    const num = document.createElement("td");
    num.className = "num";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = row.color;
    num.append(swatch, String(row.index));
    const query = document.createElement("td");
    query.textContent = row.kind === "report" ? `${row.query} (report)` : row.query;
    if (row.kind !== "box" && !row.present) {
      const absent = document.createElement("div");
      absent.className = "absent";
      absent.textContent = absentText(row);
      query.appendChild(absent);
    }
    const score = document.createElement("td");
    score.textContent = row.score === null ? "–" : row.score.toFixed(2);
    const sentence = document.createElement("td");
    sentence.className = "sentence";
    sentence.textContent = row.sentence || "–";
    tr.append(num, query, score, sentence);
    body.appendChild(tr);
  }
}

function absentText(row) {
  // the table's note under a prompt that is not present; row.best: its most probable region, drawn dashed
  if (!row.best) return "not found on the image";
  return `not present; dashed box: its most probable region (weight ${row.best.weight.toFixed(2)}), ` +
    "below the presence threshold";
}

function annotatedAlt(dashed) {
  // text alternative of the annotated image: which items are dashed best candidates
  let alt = "the X-ray with the predicted boxes";
  if (dashed.length) {
    alt += "; dashed, not present: " + dashed.map((row) =>
      `${row.index} ${row.query} (best candidate ${row.best.weight.toFixed(2)})`).join(", ");
  }
  return alt;
}

// ------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  bindCanvas();
  renderBoxes();
  $("file").addEventListener("change", (event) => uploadFile(event.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    uploadFile(event.dataTransfer.files[0]);
  });
  for (const chip of document.querySelectorAll(".chip")) {
    chip.addEventListener("click", () => {
      const current = prompts();
      if (!current.includes(chip.textContent)) $("prompts").value = [...current, chip.textContent].join("\n");
      updateButton();
    });
  }
  $("prompts").addEventListener("input", updateButton);
  $("prompts").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); explain(); }
  });
  $("report").addEventListener("change", updateButton);
  $("explain").addEventListener("click", explain);
  $("cancel").addEventListener("click", cancel);
});
