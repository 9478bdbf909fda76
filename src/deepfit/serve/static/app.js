// deepfit serve: the page. Plain JavaScript, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token");
let models = [];
let current = null; // the chosen model's entry from /v1/models
let count = 0; // predictions received
let webcam = null; // {stream, timer, busy} while the camera runs

// --- talking to the server --------------------------------------------------------------------------

function withToken(url) {
  // Links and frames cannot send a header: they carry the token in the URL, as the page itself was opened.
  if (!token || !url) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (token) headers.set("Authorization", "Bearer " + token);
  const response = await fetch(path, { ...options, headers });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error : response.status + " " + response.statusText;
    throw new Error(message);
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

// --- the model chooser ------------------------------------------------------------------------------

async function loadModels() {
  const answer = await api("v1/models");
  models = answer.models || [];
  const select = $("model");
  select.innerHTML = "";
  for (const m of models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = m.name + " (" + m.task + ", " + m.modality + ")";
    select.appendChild(option);
  }
  const wanted = params.get("model");
  if (wanted && models.some((m) => m.name === wanted)) select.value = wanted;
  chooseModel();
  setStatus(models.length ? "ready" : "no models");
}

function chooseModel() {
  current = models.find((m) => m.name === $("model").value) || null;
  stopWebcam();
  clearResult();
  const modality = current ? current.modality : "image";
  const info = current ? [current.task, current.input, current.classes.length + " classes"].filter(Boolean) : [];
  $("model-info").textContent = info.join(" · ");
  $("explain").disabled = !(current && current.explains);
  if ($("explain").disabled) $("explain").checked = false;
  $("drop").hidden = modality === "text";
  $("text-input").hidden = modality !== "text";
  $("webcam").hidden = modality !== "image";
  $("microphone").hidden = modality !== "sound";
  $("file").accept = modality === "sound" ? "audio/*,.wav,.flac,.ogg,.mp3" : "image/*";
  $("drop-text").textContent =
    modality === "sound" ? "Drop a sound file here, or click to choose one" : "Drop an image here, or click to choose a file";
}

// --- predicting ---------------------------------------------------------------------------------------

function predictUrl() {
  return "v1/models/" + encodeURIComponent(current.name) + "/predict" + ($("explain").checked ? "?explain=1" : "");
}

async function predict(body, contentType) {
  if (!current) throw new Error("no model to predict with");
  const headers = contentType ? { "Content-Type": contentType } : {};
  const answer = await api(predictUrl(), { method: "POST", body, headers });
  count += 1;
  $("count").textContent = String(count);
  showResult(answer);
  return answer;
}

async function run(task) {
  showError("");
  setStatus("predicting…");
  try {
    await task();
    setStatus("ready");
  } catch (e) {
    showError(e.message);
    setStatus("failed");
  }
}

function sendFile(file) {
  if (!file || !current) return;
  const audio = $("audio");
  if (current.modality === "sound") {
    audio.src = URL.createObjectURL(file);
    audio.hidden = false;
  } else {
    audio.hidden = true;
  }
  run(() => predict(file, file.type || "application/octet-stream"));
}

function sendText() {
  const text = $("text").value;
  if (!text.trim()) return;
  run(() => predict(JSON.stringify({ text }), "application/json"));
}

// --- drawing the answer ---------------------------------------------------------------------------------

function clearResult() {
  $("picture").hidden = true;
  $("picture").removeAttribute("src");
  $("label").textContent = "";
  $("probability").textContent = "";
  $("bars").innerHTML = "";
  $("detections").innerHTML = "";
  $("explanation-box").hidden = true;
  $("explanation").removeAttribute("src");
  $("tokens").innerHTML = "";
  $("explanation-error").textContent = "";
  $("raw").textContent = "";
  $("output").dataset.task = "";
}

function percent(p) {
  return (100 * p).toFixed(p >= 0.1 ? 1 : 2) + " %";
}

function bar(name, value) {
  const row = document.createElement("div");
  row.className = "bar";
  row.dataset.label = name;
  const label = document.createElement("span");
  label.className = "bar-label";
  label.textContent = name;
  const track = document.createElement("span");
  track.className = "bar-track";
  const fill = document.createElement("span");
  fill.className = "bar-fill";
  fill.style.width = Math.max(0, Math.min(1, value)) * 100 + "%";
  track.appendChild(fill);
  const number = document.createElement("span");
  number.className = "bar-value";
  number.textContent = percent(value);
  row.append(label, track, number);
  return row;
}

function showResult(answer) {
  const result = answer.result || {};
  const output = $("output");
  output.dataset.task = answer.task || "";
  const picture = $("picture");
  if (answer.picture) {
    picture.onload = () => picture.classList.toggle("small", picture.naturalWidth < 128);
    picture.src = answer.picture;
    picture.hidden = false;
  } else {
    picture.hidden = true;
  }
  const bars = $("bars");
  const list = $("detections");
  bars.innerHTML = "";
  list.innerHTML = "";
  if (result.label !== undefined) {
    // classification, of an image, a sound or a text
    $("label").textContent = result.label;
    $("probability").textContent = result.probability !== undefined ? percent(result.probability) : "";
    for (const [name, p] of result.top || []) bars.appendChild(bar(String(name), p));
  } else if (result.detections !== undefined) {
    const n = result.objects !== undefined ? result.objects : result.detections.length;
    $("label").textContent = n + (n === 1 ? " object" : " objects");
    $("probability").textContent = "";
    for (const d of result.detections) {
      const item = document.createElement("li");
      const box = (d.box || []).map((v) => Math.round(v)).join(", ");
      item.textContent = d.class + " " + percent(d.score) + (box ? " [" + box + "]" : "");
      list.appendChild(item);
    }
  } else if (result.pixels !== undefined) {
    const entries = Object.entries(result.pixels).sort((a, b) => b[1] - a[1]);
    $("label").textContent = entries.length ? entries[0][0] : "";
    $("probability").textContent = entries.length ? percent(entries[0][1]) + " of the pixels" : "";
    for (const [name, fraction] of entries) bars.appendChild(bar(name, fraction));
  } else {
    $("label").textContent = "";
    $("probability").textContent = "";
  }
  const box = $("explanation-box");
  const explanation = $("explanation");
  const tokens = $("tokens");
  tokens.innerHTML = "";
  if (answer.explanation) {
    explanation.onload = () => explanation.classList.toggle("small", explanation.naturalWidth < 128);
    explanation.src = answer.explanation;
    explanation.hidden = false;
  } else {
    explanation.removeAttribute("src");
    explanation.hidden = true;
  }
  if (answer.tokens) showTokens(tokens, answer.tokens);
  $("explanation-error").textContent = answer.explanation_error ? "No explanation: " + answer.explanation_error : "";
  box.hidden = !(answer.explanation || answer.tokens || answer.explanation_error);
  $("raw").textContent = JSON.stringify({ ...answer, picture: answer.picture ? "…" : undefined,
    explanation: answer.explanation ? "…" : undefined }, null, 2);
}

function showTokens(target, tokens) {
  const top = Math.max(1e-9, ...tokens.map(([, s]) => Math.abs(s)));
  for (const [text, score] of tokens) {
    const span = document.createElement("span");
    span.className = "token";
    span.textContent = text;
    span.title = score.toFixed(3);
    const a = Math.min(1, Math.abs(score) / top) * 0.8;
    span.style.background = score >= 0 ? "rgba(220, 50, 40, " + a + ")" : "rgba(40, 90, 220, " + a + ")";
    target.append(span, " ");
  }
}

// --- the webcam: a frame every half second ------------------------------------------------------------

// A camera or microphone stream; browsers offer none outside https and localhost.
async function userMedia(what, constraints) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error(`this browser gives no ${what} here (the page needs https or localhost)`);
  }
  return navigator.mediaDevices.getUserMedia(constraints);
}

async function startWebcam() {
  const stream = await userMedia("camera", { video: true, audio: false });
  const video = $("video");
  video.srcObject = stream;
  video.hidden = false;
  await video.play().catch(() => {});
  webcam = { stream, busy: false, timer: null };
  webcam.timer = setInterval(grabFrame, 500);
  $("webcam").textContent = "Stop webcam";
  $("webcam").classList.add("on");
}

function stopWebcam() {
  if (!webcam) return;
  clearInterval(webcam.timer);
  for (const track of webcam.stream.getTracks()) track.stop();
  webcam = null;
  $("video").srcObject = null;
  $("video").hidden = true;
  $("webcam").textContent = "Webcam";
  $("webcam").classList.remove("on");
}

function grabFrame() {
  const video = $("video");
  if (!webcam || webcam.busy || !video.videoWidth) return; // one frame in flight at a time
  const canvas = $("frame");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const session = webcam;
  session.busy = true;
  canvas.toBlob(async (blob) => {
    try {
      if (blob && webcam === session) {
        await predict(blob, "image/jpeg");
        showError("");
        setStatus("live");
      }
    } catch (e) {
      showError(e.message);
    } finally {
      session.busy = false;
    }
  }, "image/jpeg", 0.85);
}

// --- the microphone: one second, posted as WAV ----------------------------------------------------------

function encodeWav(samples, rate) {
  // 16-bit mono PCM in a RIFF/WAVE container
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // size of the fmt chunk
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // one channel
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

async function recordSecond() {
  const stream = await userMedia("microphone", { audio: true, video: false });
  const button = $("microphone");
  button.disabled = true;
  button.textContent = "Recording…";
  try {
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    recorder.ondataavailable = (e) => chunks.push(e.data);
    const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
    recorder.start();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    recorder.stop();
    await stopped;
    const context = new AudioContext();
    const decoded = await context.decodeAudioData(await new Blob(chunks).arrayBuffer());
    context.close();
    const wav = encodeWav(decoded.getChannelData(0), decoded.sampleRate);
    $("audio").src = URL.createObjectURL(wav);
    $("audio").hidden = false;
    await predict(wav, "audio/wav");
  } finally {
    for (const track of stream.getTracks()) track.stop();
    button.disabled = false;
    button.textContent = "Microphone";
  }
}

// --- runs and their reports ---------------------------------------------------------------------------

let runs = [];

async function loadRuns() {
  const answer = await api("v1/runs");
  runs = answer.runs || [];
  const body = $("runs-table").querySelector("tbody");
  body.innerHTML = "";
  for (const r of runs) {
    const row = document.createElement("tr");
    row.dataset.run = r.name;
    for (const key of ["name", "task", "data", "metric", "date"]) {
      const cell = document.createElement("td");
      cell.textContent = r[key] === null || r[key] === undefined ? "" : String(r[key]);
      cell.className = "col-" + key;
      row.appendChild(cell);
    }
    const cell = document.createElement("td");
    if (r.report) {
      const link = document.createElement("a");
      link.href = withToken(r.report);
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = "report";
      link.className = "report-link";
      link.dataset.testid = "report-link";
      cell.appendChild(link);
    } else {
      cell.textContent = "—";
      cell.className = "muted";
    }
    row.appendChild(cell);
    body.appendChild(row);
  }
  $("runs-empty").hidden = runs.length > 0;
  const withReports = runs.filter((r) => r.report);
  for (const [i, id] of [[0, "compare-a"], [1, "compare-b"]]) {
    const select = $(id);
    const before = select.value;
    select.innerHTML = "";
    for (const r of withReports) {
      const option = document.createElement("option");
      option.value = r.name;
      option.textContent = r.name + (r.metric ? " — " + r.metric : "");
      select.appendChild(option);
    }
    if (withReports.some((r) => r.name === before)) select.value = before;
    else if (withReports.length) select.value = withReports[Math.min(i, withReports.length - 1)].name;
  }
  showCompared();
}

function showCompared() {
  for (const [selectId, frameId] of [["compare-a", "frame-a"], ["compare-b", "frame-b"]]) {
    const r = runs.find((x) => x.name === $(selectId).value);
    const frame = $(frameId);
    const url = r && r.report ? withToken(r.report) : "about:blank";
    if (frame.getAttribute("src") !== url) frame.setAttribute("src", url);
  }
}

// --- tabs ---------------------------------------------------------------------------------------------

function showTab(name) {
  const runsTab = name === "runs";
  $("predict").hidden = runsTab;
  $("runs").hidden = !runsTab;
  $("tab-predict").setAttribute("aria-selected", String(!runsTab));
  $("tab-runs").setAttribute("aria-selected", String(runsTab));
  if (runsTab) {
    stopWebcam();
    loadRuns().catch((e) => showError(e.message));
  }
}

// --- wiring -------------------------------------------------------------------------------------------

function wire() {
  $("model").addEventListener("change", chooseModel);
  $("file").addEventListener("change", (e) => {
    sendFile(e.target.files[0]);
    e.target.value = ""; // the same file again predicts again
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) sendFile(e.dataTransfer.files[0]);
  });
  $("send").addEventListener("click", sendText);
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) sendText();
  });
  $("webcam").addEventListener("click", () => {
    if (webcam) stopWebcam();
    else run(startWebcam);
  });
  $("microphone").addEventListener("click", () => run(recordSecond));
  $("tab-predict").addEventListener("click", () => { location.hash = "predict"; });
  $("tab-runs").addEventListener("click", () => { location.hash = "runs"; });
  window.addEventListener("hashchange", () => showTab(location.hash.slice(1)));
  $("compare-a").addEventListener("change", showCompared);
  $("compare-b").addEventListener("change", showCompared);
}

wire();
showTab(location.hash.slice(1));
loadModels().catch((e) => {
  showError(e.message);
  setStatus("failed");
});
