// The page: try a served VAE in the browser. Plain JavaScript, no build step; it
// talks to this service's public API only (relative URLs, so it also works behind
// a proxy that serves the service under a path).

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "vae-serve.api-key";
const PAD_SIDE = 280; // the drawing pad's longer side, in canvas pixels

// -- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

/** The API's `detail` as one sentence (FastAPI's validation errors are a list). */
async function detailOf(response) {
  try {
    const { detail } = await response.json();
    if (typeof detail === "string") return detail;
    if (Array.isArray(detail)) {
      return detail.map((e) => `${(e.loc || []).slice(1).join(".")}: ${e.msg}`).join("; ");
    }
  } catch {
    // not JSON: fall through to the status line
  }
  return `${response.status} ${response.statusText}`.trim();
}

let keyPrompt = null; // one dialog for every request that met a 401 meanwhile

function askForKey(why) {
  keyPrompt ??= new Promise((resolve, reject) => {
    const dialog = $("key-dialog");
    $("key-why").textContent = why;
    $("key").value = "";
    dialog.addEventListener(
      "close",
      () => {
        keyPrompt = null;
        const key = $("key").value.trim();
        if (dialog.returnValue === "ok" && key) {
          sessionStorage.setItem(KEY_STORAGE, key);
          resolve();
        } else {
          reject(new ApiError(401, "this service needs an API key; reload the page to enter it"));
        }
      },
      { once: true },
    );
    dialog.showModal();
  });
  return keyPrompt;
}

/** fetch() against the API: the key when we have one, asked for on a 401; errors as ApiError. */
async function api(path, { method = "GET", body, headers = {}, params = {} } = {}) {
  const url = new URL(path, document.baseURI);
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  for (;;) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    const sent = new Headers(headers);
    if (key) sent.set("X-API-Key", key);
    let response;
    try {
      response = await fetch(url, { method, body, headers: sent });
    } catch (error) {
      throw new ApiError(0, `the service did not answer (${error.message})`);
    }
    if (response.status === 401) {
      const detail = await detailOf(response);
      sessionStorage.removeItem(KEY_STORAGE);
      await askForKey(key ? `The key was refused: ${detail}` : `The server said: ${detail}`);
      continue;
    }
    if (!response.ok) throw new ApiError(response.status, await detailOf(response));
    return response;
  }
}

function showError(id, error) {
  const box = $(id);
  box.hidden = !error;
  box.textContent = error ? error.message : "";
  if (error && !(error instanceof ApiError)) console.warn(error);
}

/** Runs an action, its failure shown in the box next to the control the user used. */
async function guarded(errorId, action) {
  try {
    const result = await action();
    showError(errorId, null);
    return result;
  } catch (error) {
    showError(errorId, error);
    return undefined;
  }
}

// -- the model being tried -------------------------------------------------------------

const state = {
  models: [], // /models
  model: null, // { name, version, channels, height, width }
  calibrated: new Set(), // scores the chosen version's manifest calibrates
};

const modelParams = () => ({ model: state.model.name, version: state.model.version });

function versionsOf(name) {
  return state.models.find((m) => m.name === name)?.versions ?? [];
}

function fillModels(preferred) {
  const select = $("model");
  select.replaceChildren(...state.models.map((m) => new Option(m.name, m.name)));
  if (state.models.some((m) => m.name === preferred.model)) select.value = preferred.model;
  fillVersions(preferred.version);
  select.disabled = false;
}

function fillVersions(preferred) {
  const select = $("version");
  const versions = versionsOf($("model").value).map((v) => v.version).sort((a, b) => b - a);
  select.replaceChildren(
    ...versions.map((v, i) => new Option(i === 0 ? `${v} (newest)` : String(v), v)),
  );
  if (versions.includes(Number(preferred))) select.value = preferred;
  select.disabled = false;
}

async function chooseModel() {
  const name = $("model").value;
  const info = versionsOf(name).find((v) => String(v.version) === $("version").value);
  if (!info) return;
  const previous = state.model;
  const { channels, height, width } = info.input;
  state.model = { name, version: info.version, channels, height, width };
  const kind = channels === 1 ? "grey" : channels === 3 ? "colour" : `${channels} channels`;
  $("model-info").textContent =
    `${height}×${width} ${kind} · latent ${info.latent_dim} · ${info.likelihood.replace("_", " ")} · ${info.provider.replace("ExecutionProvider", "")}`;
  await guarded("page-error", async () => {
    const detail = await (await api(`models/${encodeURIComponent(name)}`)).json();
    const manifest = detail.versions.find((v) => v.version === info.version)?.manifest;
    const calibration = manifest?.calibration;
    state.calibrated = new Set(calibration ? ["elbo", ...Object.keys(calibration.scores ?? {})] : []);
    labelScores();
  });
  const sameShape =
    previous &&
    ["channels", "height", "width"].every((key) => previous[key] === state.model[key]);
  if (!sameShape) {
    pad.reshape();
    walk.reset();
  }
  $("seen-caption").textContent = `what the model sees, ${height}×${width}`;
  $("colour").closest("label").hidden = channels !== 3;
  if (pad.input) scoring.soon(0, "input-error");
}

// -- scores: read from the API's own schema, so a new score appears here by itself --------

function fillScores(spec) {
  const parameters = spec.paths?.["/elbo"]?.post?.parameters ?? [];
  const resolve = (schema) => {
    const ref = schema?.$ref ?? schema?.allOf?.[0]?.$ref;
    return ref ? resolve(ref.split("/").slice(1).reduce((o, k) => o?.[k], spec)) : schema ?? {};
  };
  const param = (name) => parameters.find((p) => p.name === name);
  const score = resolve(param("score")?.schema);
  const names = score.enum ?? ["elbo"];
  const select = $("score-name");
  select.replaceChildren(...names.map((name) => new Option(name, name)));
  select.value = score.default ?? param("score")?.schema?.default ?? names[0];
  $("score-help").textContent = param("score")?.description ?? "";
  const fprDefault = Number(resolve(param("fpr")?.schema).default ?? 0.01);
  const rates = [...new Set([0.001, 0.005, 0.01, 0.02, 0.05, 0.1, fprDefault])].sort((a, b) => a - b);
  const fpr = $("fpr");
  fpr.replaceChildren(...rates.map((r) => new Option(`${+(r * 100).toPrecision(3)}%`, r)));
  fpr.value = fprDefault;
  select.disabled = fpr.disabled = false;
}

function labelScores() {
  for (const option of $("score-name").options) {
    option.textContent = state.calibrated.has(option.value)
      ? option.value
      : `${option.value} (not calibrated)`;
  }
}

// -- the drawing pad -------------------------------------------------------------------

/** The input: what is on the pad (drawn, sampled, or an image file drawn onto it). */
const pad = {
  canvas: null,
  ctx: null,
  scale: 10, // pad pixels per model pixel
  input: null, // null | { kind: "pixels" } | { kind: "file", file, resize, size }
  undo: [],
  drawing: false,
  last: null,
  keyPen: { x: 0, y: 0, down: false },

  init() {
    this.canvas = $("canvas");
    this.ctx = this.canvas.getContext("2d", { willReadFrequently: true });
    this.canvas.addEventListener("pointerdown", (e) => this.down(e));
    this.canvas.addEventListener("pointermove", (e) => this.move(e));
    for (const type of ["pointerup", "pointercancel"]) {
      this.canvas.addEventListener(type, () => this.up());
    }
    this.canvas.addEventListener("keydown", (e) => this.key(e));
    this.canvas.addEventListener("blur", () => ($("cursor").hidden = true));
    $("clear").addEventListener("click", () => this.clear());
    $("undo").addEventListener("click", () => this.popUndo());
  },

  reshape() {
    const { width, height } = state.model;
    this.scale = Math.max(1, Math.ceil(PAD_SIDE / Math.max(width, height)));
    this.canvas.width = width * this.scale;
    this.canvas.height = height * this.scale;
    document.documentElement.style.setProperty("--aspect", `${width} / ${height}`);
    for (const canvas of document.querySelectorAll("#seen, .end canvas, #walk-view")) {
      canvas.width = width;
      canvas.height = height;
    }
    this.keyPen = { x: this.canvas.width / 2, y: this.canvas.height / 2, down: false };
    this.clear();
  },

  blank() {
    this.ctx.fillStyle = "#000";
    this.ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
  },

  clear() {
    this.blank();
    this.undo = [];
    this.input = null;
    $("undo").disabled = true;
    $("pad-hint").hidden = false;
    $("input-note").textContent = "";
    showError("input-error", null);
    this.showSeen();
    scoring.clear();
  },

  pushUndo() {
    this.undo.push({
      image: this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height),
      input: this.input,
    });
    if (this.undo.length > 30) this.undo.shift();
    $("undo").disabled = false;
  },

  popUndo() {
    const previous = this.undo.pop();
    if (!previous) return;
    this.ctx.putImageData(previous.image, 0, 0);
    this.input = previous.input;
    $("undo").disabled = this.undo.length === 0;
    $("pad-hint").hidden = this.input !== null;
    this.changed(0);
  },

  brushWidth() {
    return Number($("brush").value) * this.scale;
  },

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) / box.width) * this.canvas.width,
      y: ((event.clientY - box.top) / box.height) * this.canvas.height,
    };
  },

  startStroke() {
    this.pushUndo();
    $("pad-hint").hidden = true;
    if (this.input?.kind === "file") $("input-note").textContent = "";
    this.input = { kind: "pixels" }; // a drawn-on file becomes the drawing
  },

  line(from, to) {
    const ctx = this.ctx;
    ctx.strokeStyle = state.model.channels === 3 ? $("colour").value : "#fff";
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineWidth = this.brushWidth();
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x, to.y);
    ctx.stroke();
  },

  down(event) {
    if (event.button !== 0 || !state.model) return;
    event.preventDefault();
    this.canvas.setPointerCapture(event.pointerId);
    this.startStroke();
    this.drawing = true;
    this.last = this.point(event);
    this.line(this.last, this.last);
    this.changed();
  },

  move(event) {
    if (!this.drawing) return;
    const events = event.getCoalescedEvents?.() ?? [event];
    for (const e of events.length ? events : [event]) {
      const p = this.point(e);
      this.line(this.last, p);
      this.last = p;
    }
    this.changed();
  },

  up() {
    if (!this.drawing) return;
    this.drawing = false;
    this.changed(0);
  },

  /** Keyboard drawing: arrows move the brush one model pixel, Space lifts or lowers it. */
  key(event) {
    if (!state.model) return;
    const pen = this.keyPen;
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    if (event.key in moves) {
      const [dx, dy] = moves[event.key];
      const from = { x: pen.x, y: pen.y };
      pen.x = Math.min(Math.max(pen.x + dx * this.scale, 0), this.canvas.width);
      pen.y = Math.min(Math.max(pen.y + dy * this.scale, 0), this.canvas.height);
      if (pen.down) {
        this.line(from, pen);
        this.changed();
      }
    } else if (event.key === " ") {
      pen.down = !pen.down;
      if (pen.down) {
        this.startStroke();
        this.line(pen, pen);
        this.changed();
      } else {
        this.changed(0);
      }
    } else if (event.key === "Delete" || event.key === "Backspace") {
      this.clear();
    } else {
      return;
    }
    event.preventDefault();
    this.showCursor();
  },

  showCursor() {
    const cursor = $("cursor");
    const size = (this.brushWidth() / this.canvas.width) * 100;
    cursor.hidden = false;
    cursor.classList.toggle("down", this.keyPen.down);
    cursor.style.left = `${(this.keyPen.x / this.canvas.width) * 100}%`;
    cursor.style.top = `${(this.keyPen.y / this.canvas.height) * 100}%`;
    cursor.style.width = `${size}%`;
  },

  changed(delay = 150) {
    this.showSeen();
    scoring.soon(delay, "input-error");
  },

  /** The pad at the model's resolution: (C, H, W) values in [0, 1], mean of each block of
   * pad pixels; grey models see the luma Pillow's convert("L") computes. */
  pixels() {
    const { channels, height, width } = state.model;
    const s = this.scale;
    const rgba = this.ctx.getImageData(0, 0, width * s, height * s).data;
    const out = new Float32Array(channels * height * width);
    const plane = height * width;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const sums = [0, 0, 0];
        for (let dy = 0; dy < s; dy++) {
          let i = ((y * s + dy) * width * s + x * s) * 4;
          for (let dx = 0; dx < s; dx++, i += 4) {
            sums[0] += rgba[i];
            sums[1] += rgba[i + 1];
            sums[2] += rgba[i + 2];
          }
        }
        const n = s * s * 255;
        if (channels === 3) {
          for (let c = 0; c < 3; c++) out[c * plane + y * width + x] = sums[c] / n;
        } else {
          const luma = (sums[0] * 299 + sums[1] * 587 + sums[2] * 114) / 1000 / n;
          for (let c = 0; c < channels; c++) out[c * plane + y * width + x] = luma;
        }
      }
    }
    return out;
  },

  showSeen() {
    if (state.model) paint($("seen"), this.pixels());
  },

  /** Put model-sized pixels (C, H, W) on the pad, as the input. */
  setPixels(pixels) {
    this.pushUndo();
    const small = document.createElement("canvas");
    small.width = state.model.width;
    small.height = state.model.height;
    paint(small, pixels);
    this.ctx.imageSmoothingEnabled = false;
    this.ctx.drawImage(small, 0, 0, this.canvas.width, this.canvas.height);
    this.input = { kind: "pixels" };
    $("pad-hint").hidden = true;
    $("input-note").textContent = "";
    this.changed(0);
  },

  /** An image file as the input: drawn on the pad, sent to the API as it is. */
  async setFile(file) {
    if (!state.model) return;
    scoring.pending(true); // reading the file takes a moment before it is scored
    const { width, height } = state.model;
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      // Not an image the browser reads: the API will say what it makes of it.
    }
    this.pushUndo();
    this.blank();
    $("pad-hint").hidden = true;
    const name = file.name || "the pasted image";
    if (bitmap) {
      this.ctx.imageSmoothingEnabled = bitmap.width > width || bitmap.height > height;
      this.ctx.drawImage(bitmap, 0, 0, this.canvas.width, this.canvas.height);
      const resize = bitmap.width !== width || bitmap.height !== height;
      this.input = { kind: "file", file, resize };
      $("input-note").textContent = resize
        ? `${name} is ${bitmap.height}×${bitmap.width}: the server resizes it to ${height}×${width} (resize=true).`
        : `${name}, ${height}×${width}, as the model takes it.`;
      bitmap.close();
    } else {
      this.input = { kind: "file", file, resize: false };
      $("input-note").textContent = `${name}: sent to the server as it is.`;
    }
    this.changed(0);
  },
};

/** Paint (C, H, W) values in [0, 1] onto a canvas of the model's size. */
function paint(canvas, pixels) {
  const { width, height } = canvas;
  const plane = width * height;
  const channels = pixels.length / plane;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(width, height);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      image.data[i * 4 + c] = Math.round(255 * pixels[(channels === 3 ? c : 0) * plane + i]);
    }
    image.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

/** (C, H, W) flat pixels -> the nested lists of one image for a JSON body. */
function nested(pixels) {
  const { channels, height, width } = state.model;
  const round = (v) => Math.round(v * 10000) / 10000;
  const plane = (c) =>
    Array.from({ length: height }, (_, y) =>
      Array.from(pixels.subarray(c * height * width + y * width, c * height * width + (y + 1) * width), round),
    );
  return channels === 1 ? plane(0) : Array.from({ length: channels }, (_, c) => plane(c));
}

/** An input (the pad's, or a walk end's) as the body and query of an images request. */
function imagesRequest(input, pixels) {
  if (input.kind === "file") {
    const form = new FormData();
    form.append("images", input.file, input.file.name || "image");
    return { body: form, params: { ...modelParams(), resize: input.resize || undefined } };
  }
  return {
    body: JSON.stringify({ pixels: [nested(pixels)] }),
    headers: { "Content-Type": "application/json" },
    params: modelParams(),
  };
}

async function sampleOne() {
  const response = await api("sample", { params: { ...modelParams(), n: 1, format: "json" } });
  const { pixels } = await response.json();
  return Float32Array.from(pixels[0].flat(3));
}

// -- scoring, live while drawing ---------------------------------------------------------

const scoring = {
  timer: null,
  busy: false,
  again: false,
  errorId: "input-error",
  mapUrl: null,

  /** Score the input after `delay` ms; at most one request at a time, the newest input wins. */
  soon(delay, errorId) {
    this.errorId = errorId;
    this.pending(true);
    if (this.timer !== null && delay > 0) return; // throttled: a pending one will read the pad
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.now();
    }, delay);
  },

  /** aria-busy on the scores while an answer is due (tests wait for it to clear). */
  pending(busy) {
    $("score").setAttribute("aria-busy", String(busy));
  },

  async now() {
    if (this.busy) {
      this.again = true;
      return;
    }
    if (!pad.input || !state.model) {
      this.pending(this.timer !== null);
      return;
    }
    this.busy = true;
    const input = pad.input;
    const request = imagesRequest(input, input.kind === "pixels" ? pad.pixels() : null);
    const fpr = $("fpr").value;
    const score = $("score-name").value;
    const errorId = this.errorId;
    try {
      const [result, map] = await Promise.all([
        api("elbo", { method: "POST", ...request, params: { ...request.params, score, fpr } }),
        api("elbo/map", { method: "POST", ...request, params: { ...request.params, zoom: 1 } }),
      ]);
      const [answer, mapBlob] = [await result.json(), await map.blob()];
      if (pad.input !== null) await this.show(answer, mapBlob); // not if cleared meanwhile
      showError("input-error", null);
      showError("score-error", null);
    } catch (error) {
      showError(errorId, error);
      this.clear();
    } finally {
      this.busy = false;
      if (this.again) {
        this.again = false;
        this.now();
      } else {
        this.pending(this.timer !== null);
      }
    }
  },

  async show(answer, mapBlob) {
    const r = answer.results[0];
    const previous = this.mapUrl;
    this.mapUrl = URL.createObjectURL(mapBlob);
    const images = [...document.querySelectorAll("#maps img")];
    for (const img of images) img.src = this.mapUrl;
    // Swap the panels and the numbers together, once the new map is decoded.
    await Promise.all(images.map((img) => img.decode().catch(() => undefined)));
    if (previous) URL.revokeObjectURL(previous);
    $("maps").dataset.state = "shown";
    const nats = (v) => `${v.toFixed(1)} nats`;
    $("n-elbo").textContent = nats(r.elbo);
    $("n-reconstruction").textContent = nats(r.reconstruction);
    $("n-kl").textContent = nats(r.kl);
    $("n-bpd").textContent = r.bits_per_dim.toFixed(3);
    $("n-anomaly").textContent = r.anomaly_score.toFixed(1);
    $("n-score-name").textContent = answer.score + (answer.k > 1 ? `, k = ${answer.k}` : "");
    $("n-fpr").textContent = `at ${+(answer.fpr * 100).toPrecision(3)}% FPR`;
    $("n-threshold").textContent =
      answer.anomaly_threshold === null ? "not calibrated" : answer.anomaly_threshold.toFixed(1);
    const verdict = $("verdict");
    const rate = `${+(answer.fpr * 100).toPrecision(3)}%`;
    if (r.is_anomaly === null) {
      verdict.dataset.flag = "none";
      $("flag").textContent = `No calibration of “${answer.score}” in this version`;
      $("percentile").textContent = "Scores are shown, but there is nothing to compare them with.";
      $("meter-dot").style.left = "0%";
      return;
    }
    verdict.dataset.flag = r.is_anomaly ? "anomaly" : "normal";
    $("flag").textContent = r.is_anomaly
      ? `Unusual: flagged at a ${rate} false-positive rate`
      : `Looks normal at a ${rate} false-positive rate`;
    const p = r.percentile;
    $("percentile").textContent =
      `${p < 0.1 ? p.toPrecision(1) : +p.toPrecision(3)}% of held-out normal images score at least this anomalous (${answer.score}).`;
    $("meter-dot").style.left = `${meter(p)}%`;
    $("meter-cut").style.left = `${meter(answer.fpr * 100)}%`;
  },

  clear() {
    $("maps").dataset.state = "empty";
    for (const img of document.querySelectorAll("#maps img")) img.removeAttribute("src");
    $("verdict").dataset.flag = "none";
    $("flag").textContent = "Draw something to score it";
    $("percentile").textContent = "";
    for (const id of ["n-elbo", "n-reconstruction", "n-kl", "n-bpd", "n-anomaly", "n-threshold"]) {
      $(id).textContent = "–";
    }
  },
};

/** Position on the meter, 0-100: a percentile on a log scale, 100% left, 0.1% right. */
function meter(percentile) {
  const p = Math.min(Math.max(percentile, 0.1), 100);
  return (Math.log10(100 / p) / 3) * 100;
}

// -- sampling the prior ------------------------------------------------------------------

let gridUrl = null;

async function sample() {
  const n = $("n").value;
  const temperature = $("temperature").value;
  const params = { ...modelParams(), n, temperature, seed: $("seed").value };
  const response = await api("sample", { params });
  const seed = response.headers.get("X-Seed");
  const blob = await response.blob();
  if (gridUrl) URL.revokeObjectURL(gridUrl);
  gridUrl = URL.createObjectURL(blob);
  const grid = $("grid");
  grid.src = gridUrl;
  grid.hidden = false;
  const exact = { ...params, seed };
  const page = new URL(document.baseURI);
  page.search = new URLSearchParams(exact).toString();
  page.hash = "sample";
  $("sample-link").href = page.href;
  const png = new URL("sample", document.baseURI);
  png.search = new URLSearchParams(exact).toString();
  $("sample-png").href = png.href;
  $("sample-seed").textContent = seed;
  $("sample-meta").hidden = false;
}

// -- the walk between two encodings ------------------------------------------------------

const walk = {
  ends: { a: null, b: null }, // { input, pixels } each
  frames: [],

  init() {
    for (const button of document.querySelectorAll(".end button")) {
      button.addEventListener("click", () =>
        guarded("walk-error", () => this.take(button.dataset.end, button.dataset.from)),
      );
    }
    $("walk-go").addEventListener("click", () => guarded("walk-error", () => this.run()));
    $("walk-slider").addEventListener("input", () => this.pick(Number($("walk-slider").value)));
  },

  reset() {
    this.ends = { a: null, b: null };
    this.frames = [];
    for (const canvas of document.querySelectorAll(".end canvas")) {
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      canvas.closest(".end").classList.remove("set");
    }
    $("walk-go").disabled = true;
    $("walk-result").hidden = true;
  },

  async take(end, from) {
    let taken;
    if (from === "sample") {
      const pixels = await sampleOne();
      taken = { input: { kind: "pixels" }, pixels };
    } else if (pad.input) {
      taken = { input: pad.input, pixels: pad.pixels() };
    } else {
      throw new Error("Draw, drop or sample an input first.");
    }
    this.ends[end] = taken;
    const canvas = $(`end-${end}`).querySelector("canvas");
    paint(canvas, taken.pixels);
    canvas.closest(".end").classList.add("set");
    $("walk-go").disabled = !(this.ends.a && this.ends.b);
    if (this.ends.a && this.ends.b) await this.run();
  },

  async encode(end) {
    const request = imagesRequest(end.input, end.pixels);
    const response = await api("encode", { method: "POST", ...request });
    return (await response.json()).results[0].mean;
  },

  async run() {
    const { a, b } = this.ends;
    if (!a || !b) throw new Error("Choose both ends of the walk first.");
    const steps = Math.min(Math.max(Math.round(Number($("steps").value)) || 10, 2), 64);
    const [from, to] = await Promise.all([this.encode(a), this.encode(b)]);
    const z = Array.from({ length: steps }, (_, i) => {
      const t = i / (steps - 1);
      return from.map((v, j) => (1 - t) * v + t * to[j]);
    });
    const response = await api("decode", {
      method: "POST",
      body: JSON.stringify({ z }),
      headers: { "Content-Type": "application/json" },
      params: { ...modelParams(), format: "json" },
    });
    const { pixels } = await response.json();
    this.frames = pixels.map((image) => Float32Array.from(image.flat(2)));
    const strip = $("strip");
    strip.replaceChildren(
      ...this.frames.map((frame, i) => {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "frame";
        button.setAttribute("aria-label", `step ${i + 1} of ${steps}`);
        const canvas = document.createElement("canvas");
        canvas.width = state.model.width;
        canvas.height = state.model.height;
        paint(canvas, frame);
        button.append(canvas);
        button.addEventListener("click", () => this.pick(i));
        return button;
      }),
    );
    strip.style.setProperty("--columns", String(Math.min(steps, 16)));
    const slider = $("walk-slider");
    slider.max = String(steps - 1);
    $("walk-result").hidden = false;
    this.pick(Math.min(Number(slider.value), steps - 1));
  },

  pick(i) {
    $("walk-slider").value = String(i);
    const steps = this.frames.length;
    $("walk-t").textContent = `t = ${(i / (steps - 1)).toFixed(2)}`;
    paint($("walk-view"), this.frames[i]);
    for (const [j, frame] of [...$("strip").children].entries()) {
      frame.setAttribute("aria-pressed", String(j === i));
    }
  },
};

// -- wiring ----------------------------------------------------------------------------

function wire() {
  pad.init();
  walk.init();
  $("model").addEventListener("change", () => {
    fillVersions(null);
    chooseModel();
  });
  $("version").addEventListener("change", () => chooseModel());
  for (const id of ["score-name", "fpr"]) {
    $(id).addEventListener("change", () => scoring.soon(0, "score-error"));
  }
  $("brush").addEventListener("input", () => $("cursor").hidden || pad.showCursor());
  $("file").addEventListener("change", (e) => {
    const [file] = e.target.files;
    if (file) pad.setFile(file);
    e.target.value = ""; // the same file again is a change too
  });
  $("sample-input").addEventListener("click", () =>
    guarded("input-error", async () => pad.setPixels(await sampleOne())),
  );
  const drop = $("input");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("dropping");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("dropping"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dropping");
    const [file] = e.dataTransfer.files;
    if (file) pad.setFile(file);
  });
  document.addEventListener("paste", (e) => {
    const file = [...(e.clipboardData?.files ?? [])].find((f) => f.type.startsWith("image/"));
    if (file) {
      e.preventDefault();
      pad.setFile(file);
    }
  });
  $("temperature").addEventListener("input", () => {
    $("temperature-out").textContent = Number($("temperature").value).toFixed(2);
  });
  $("sample-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded("sample-error", sample);
  });
}

async function start() {
  wire();
  const query = new URLSearchParams(location.search);
  const loaded = await guarded("page-error", async () => {
    const [spec, models] = await Promise.all([
      api("openapi.json").then((r) => r.json()),
      api("models").then((r) => r.json()),
    ]);
    fillScores(spec);
    state.models = models.models;
    if (!state.models.length) throw new Error("No model is loaded yet; reload the page in a moment.");
    fillModels({ model: query.get("model") ?? models.default_model, version: query.get("version") });
    return true;
  });
  if (!loaded) return;
  await chooseModel();
  if (query.has("seed")) {
    // A link to a grid: the same model, version, n, temperature and seed draw it again.
    for (const id of ["n", "temperature", "seed"]) {
      if (query.has(id)) $(id).value = query.get(id);
    }
    $("temperature-out").textContent = Number($("temperature").value).toFixed(2);
    await guarded("sample-error", sample);
    $("sample").scrollIntoView();
  }
  document.body.dataset.ready = "true";
}

start();
