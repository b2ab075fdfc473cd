// What both pages share: calls to this service (with the API key when it asks for one), the
// limits and defaults from /openapi.json, the health line, a job's events, and the gallery of this
// browser's recent jobs. Plain ES modules, no build step; every URL is relative to the page, so
// the page also works behind a proxy that serves the service under a path prefix.

const FINAL = ["succeeded", "failed", "cancelled"];
const KEY_STORAGE = "opea-media:api-key"; // sessionStorage: gone when the browser session ends
const RECENT = 24; // jobs the gallery remembers

export class ApiError extends Error {
  constructor(detail, status) {
    super(detail);
    this.status = status;
  }
}

/**
 * The service's error as one sentence: its `detail` (every error style has one), capitalised
 * unless it starts with the field it names ("num_frames: must be ...").
 */
export function sentence(text) {
  const trimmed = String(text || "").trim() || "the service gave no reason";
  const shown = /^[\w.[\]-]+:/.test(trimmed) ? trimmed : trimmed.charAt(0).toUpperCase() + trimmed.slice(1);
  return /[.!?]$/.test(shown) ? shown : shown + ".";
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return body.detail || (body.error && body.error.message) || response.statusText;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

// --- the API key --------------------------------------------------------------------------------

let pendingKey = null; // one question at a time, however many calls got a 401

function keyDialog() {
  let dialog = document.getElementById("key-dialog");
  if (dialog) return dialog;
  const input = element("input", { id: "api-key", type: "password", autocomplete: "off", required: "" });
  const cancel = element("button", { type: "button", class: "secondary", text: "Cancel" });
  dialog = element(
    "dialog",
    { id: "key-dialog", "aria-labelledby": "key-title" },
    element(
      "form",
      {},
      element("h2", { id: "key-title", text: "API key" }),
      element("p", { text: "This service needs an API key. It is kept for this browser session only." }),
      element("p", { class: "key-wrong form-error", text: "That key was refused; try again." }),
      element("label", { for: "api-key", text: "Key" }),
      input,
      element("div", { class: "actions" }, element("button", { type: "submit", text: "Use the key" }), cancel),
    ),
  );
  cancel.addEventListener("click", () => dialog.close());
  document.body.append(dialog);
  return dialog;
}

function askForKey(wrong) {
  if (!pendingKey) {
    pendingKey = new Promise((resolve) => {
      const dialog = keyDialog();
      const form = dialog.querySelector("form");
      const input = dialog.querySelector("input");
      dialog.querySelector(".key-wrong").hidden = !wrong;
      input.value = "";
      const done = (key) => {
        form.removeEventListener("submit", onSubmit);
        dialog.removeEventListener("close", onClose);
        if (dialog.open) dialog.close();
        pendingKey = null;
        resolve(key);
      };
      const onSubmit = (event) => {
        event.preventDefault();
        done(input.value.trim() || null);
      };
      const onClose = () => done(null);
      form.addEventListener("submit", onSubmit);
      dialog.addEventListener("close", onClose); // Esc or the Cancel button
      dialog.showModal();
      input.focus();
    });
  }
  return pendingKey;
}

/**
 * fetch() against this service. A 401 asks for the API key (kept in sessionStorage only, sent as
 * Bearer) and tries again; any other failure throws ApiError with the service's detail.
 */
export async function api(path, options = {}) {
  for (;;) {
    const headers = new Headers(options.headers || {});
    const key = sessionStorage.getItem(KEY_STORAGE);
    if (key) headers.set("Authorization", `Bearer ${key}`);
    const response = await fetch(path, { ...options, headers });
    if (response.status === 401) {
      const detail = await detailOf(response);
      sessionStorage.removeItem(KEY_STORAGE);
      const given = await askForKey(Boolean(key)); // a key sent and refused: say so
      if (!given) throw new ApiError(detail, 401);
      sessionStorage.setItem(KEY_STORAGE, given);
      continue;
    }
    if (!response.ok) throw new ApiError(await detailOf(response), response.status);
    return response;
  }
}

export async function apiJson(path, options = {}) {
  return (await api(path, options)).json();
}

// --- limits and defaults: the OpenAPI document's JSON Schema of the request ----------------------

let openapi = null; // the document, fetched once (it needs no key)

/** The schema of each property of a request model (its non-null branch), by name. */
export async function requestSchema(model) {
  openapi ||= fetch("openapi.json").then((response) => response.json());
  const properties = (await openapi).components.schemas[model].properties;
  const out = {};
  for (const [name, property] of Object.entries(properties)) {
    const branch = (property.anyOf || [property]).find((b) => b.type && b.type !== "null") || property;
    out[name] = { ...branch, default: property.default };
  }
  return out;
}

/** min, max and step of every <input data-field> from its schema; its default as the value. */
export function applyLimits(form, schema) {
  for (const input of form.querySelectorAll("input[data-field]")) {
    const rule = schema[input.dataset.field];
    if (!rule) continue;
    if (rule.minimum !== undefined) input.min = rule.minimum;
    if (rule.maximum !== undefined) input.max = rule.maximum;
    if (rule.multipleOf !== undefined) input.step = rule.multipleOf;
    else if (rule.type === "number") input.step = "any";
    if (rule.default !== undefined && rule.default !== null && input.value === "") {
      input.value = rule.default;
    }
    const hint = form.querySelector(`#${input.id}-hint`);
    if (hint && rule.minimum !== undefined) {
      hint.textContent = `${rule.minimum} to ${rule.maximum}${hint.dataset.more || ""}`;
    }
  }
}

/** The form's fields as a request body: numbers as numbers, empty ones left out (the defaults). */
export function formBody(form) {
  const body = {};
  for (const input of form.querySelectorAll("[data-field]")) {
    const text = input.value.trim();
    if (text === "") continue;
    // Out of its limits or not: the service judges, and says why in its own words.
    body[input.dataset.field] = input.type === "number" ? Number(text) : text;
  }
  return body;
}

// --- the health line ------------------------------------------------------------------------------

export function watchHealth(line) {
  const show = async () => {
    let state = "unreachable";
    let text = "The service does not answer.";
    try {
      const response = await fetch("health", { cache: "no-store" });
      const body = await response.json();
      state = body.status;
      const what = `${body.service}, model ${body.model}`;
      text = {
        healthy: `${what}: ready (${body.running} running, ${body.queue_depth} waiting).`,
        loading: `${what}: loading the model; jobs wait until it is ready.`,
        draining: `${what}: shutting down.`,
        failed: `${what}: the model failed to load. ${sentence(body.detail)}`,
      }[state] || `${what}: ${state}.`;
    } catch {
      // keep "unreachable"
    }
    line.textContent = text;
    line.dataset.state = state;
    setTimeout(show, state === "healthy" ? 10000 : 2000);
  };
  show();
}

// --- a job's events ----------------------------------------------------------------------------------

/**
 * Follow a job's server-sent events until it ends, calling onJob(job, event) for each. fetch(), not
 * EventSource: EventSource cannot send the API key. A dropped stream is opened again (it starts
 * with the job as it is now, so nothing is missed).
 */
export async function followJob(id, onJob) {
  for (;;) {
    let last = null;
    try {
      const response = await api(`v1/jobs/${encodeURIComponent(id)}/events`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
          }
          if (data.length) {
            last = JSON.parse(data.join("\n"));
            onJob(last, event);
          }
        }
      }
    } catch (error) {
      if (error instanceof ApiError) throw error; // 404 (forgotten), 401 refused: not a dropped line
    }
    if (last && FINAL.includes(last.state)) return last;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// --- the gallery of this browser's recent jobs -----------------------------------------------------

function storageKey(service) {
  return `opea-media:${service}:jobs`;
}

export function recentJobs(service) {
  try {
    const ids = JSON.parse(localStorage.getItem(storageKey(service)) || "[]");
    return Array.isArray(ids) ? ids.filter((id) => typeof id === "string") : [];
  } catch {
    return [];
  }
}

function remember(service, id) {
  const ids = [id, ...recentJobs(service).filter((other) => other !== id)].slice(0, RECENT);
  localStorage.setItem(storageKey(service), JSON.stringify(ids));
}

function forget(service, id) {
  const ids = recentJobs(service).filter((other) => other !== id);
  localStorage.setItem(storageKey(service), JSON.stringify(ids));
}

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (name === "class") node.className = value;
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

export function downloadLink(file, label) {
  const name = new URL(file.url, document.baseURI).pathname.split("/").pop();
  // The path, not the absolute URL: same origin, so `download` saves it rather than opening it.
  return element("a", { href: outputPath(file.url), download: name, class: "button", text: label });
}

/** A file's URL on this page's origin (the service's URL may name --public-url's host). */
export function outputPath(url) {
  const path = new URL(url, document.baseURI).pathname;
  return path.slice(path.indexOf("v1/outputs/"));
}

/** The outputs' size: what the job made, else what it asked for. */
export function sizeOf(job) {
  const { width, height } = job.result || job.request;
  return width && height ? `${width} x ${height}` : "the model's own";
}

const PHASES = { encoding: "Encoding the image", denoising: "Denoising", decoding: "Decoding" };

function stateText(job) {
  switch (job.state) {
    case "queued":
      return job.position ? `Queued (${job.position === 1 ? "next" : `position ${job.position}`}).` : "Queued.";
    case "running": {
      const p = job.progress;
      if (job.cancel_requested) return "Cancelling at the next step...";
      if (!p || p.total === 0) return `${PHASES[p ? p.phase : "denoising"]}...`;
      if (p.phase === "denoising") return `Denoising: step ${p.step} of ${p.total}.`;
      return `${PHASES[p.phase]}...`;
    }
    case "succeeded":
      return `Done in ${(job.result.inference_seconds || 0).toFixed(1)} s.`;
    case "failed":
      return "Failed."; // the card's alert says why
    case "cancelled":
      return "Cancelled.";
    default:
      return job.state;
  }
}

/**
 * The gallery: one card per job, newest first, each following its job's events while it runs.
 * `page.describe(job)` gives the parameters to list; `page.showResult(card, job)` fills the result.
 */
export class Gallery {
  constructor(list, service, page) {
    this.list = list;
    this.service = service;
    this.page = page;
    this.cards = new Map();
  }

  async restore() {
    for (const id of recentJobs(this.service).reverse()) {
      try {
        this.add(await apiJson(`v1/jobs/${encodeURIComponent(id)}`));
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) forget(this.service, id);
        else if (error instanceof ApiError && error.status === 401) return; // no key given: nothing to show
      }
    }
  }

  /** Show a job (new or restored) and follow it until it ends. */
  add(job) {
    remember(this.service, job.id);
    const card = this.card(job);
    this.update(card, job);
    if (!FINAL.includes(job.state)) {
      followJob(job.id, (current) => this.update(card, current)).catch((error) => {
        card.querySelector(".job-state").textContent = sentence(error.message);
      });
    }
  }

  card(job) {
    const state = element("p", { class: "job-state", tabindex: "-1", role: "status" });
    const bar = element("progress", { max: "1", value: "0", "aria-label": "Progress" });
    const cancel = element("button", { type: "button", class: "cancel", text: "Cancel" });
    const problem = element("p", { class: "job-error", role: "alert" });
    const params = element("dl", { class: "job-params" });
    for (const [term, value] of this.page.describe(job)) {
      params.append(element("dt", { text: term }), element("dd", { text: String(value) }));
    }
    const results = element("div", { class: "job-results" });
    const card = element(
      "li",
      { class: "job", "data-job": job.id },
      element("div", { class: "job-head" }, state, cancel),
      bar,
      problem,
      params,
      results,
    );
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      problem.textContent = "";
      try {
        const response = await api(`v1/jobs/${encodeURIComponent(job.id)}`, { method: "DELETE" });
        this.update(card, await response.json());
      } catch (error) {
        problem.textContent = sentence(error.message);
        cancel.disabled = false;
      }
    });
    this.cards.get(job.id)?.remove();
    this.cards.set(job.id, card);
    this.list.prepend(card);
    return card;
  }

  update(card, job) {
    // A DELETE's answer (running, cancel_requested) may arrive after the stream's final event.
    if (FINAL.includes(card.dataset.state) && !FINAL.includes(job.state)) return;
    const bar = card.querySelector("progress");
    card.dataset.state = job.state;
    card.querySelector(".job-state").textContent = stateText(job);
    const running = job.state === "running" && job.progress;
    if (running && job.progress.total > 0) {
      bar.max = job.progress.total;
      bar.value = job.progress.phase === "encoding" ? 0 : job.progress.step;
    } else if (job.state === "succeeded") {
      bar.max = 1;
      bar.value = 1;
    } else if (job.state === "queued") {
      bar.removeAttribute("value"); // indeterminate while it waits
    }
    bar.hidden = !["queued", "running", "succeeded"].includes(job.state);
    card.querySelector(".cancel").hidden = !["queued", "running"].includes(job.state);
    if (job.state === "failed" && job.error) {
      card.querySelector(".job-error").textContent = sentence(job.error.detail);
    }
    const results = card.querySelector(".job-results");
    if (job.state === "succeeded" && !results.childElementCount) this.page.showResult(results, job);
  }
}

/** Wire up a page: the health line, the limits and defaults, the gallery. */
export async function startPage({ service, model, form, page }) {
  watchHealth(document.getElementById("health"));
  const schema = await requestSchema(model);
  applyLimits(form, schema);
  const gallery = new Gallery(document.getElementById("gallery"), service, page);
  gallery.restore();
  return { gallery, schema };
}

/** Submit a form's job: POST v1/jobs with its body; problems shown in `problem` as a sentence. */
export async function submitJob(gallery, body, { formats, problem, button }) {
  problem.textContent = "";
  button.disabled = true;
  try {
    const query = formats ? `?formats=${encodeURIComponent(formats)}` : "";
    const job = await apiJson(`v1/jobs${query}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    gallery.add(job);
    return job;
  } catch (error) {
    problem.textContent = sentence(error.message);
    problem.focus();
    return null;
  } finally {
    button.disabled = false;
  }
}
