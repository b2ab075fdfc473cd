// The text2image page: a job per submit, its images in the gallery; remake one with its seed, or
// send it to image to image (the OpenAI Images API's edits, the one image-to-image of this service).
import {
  api,
  applyLimits,
  downloadLink,
  element,
  formBody,
  outputPath,
  requestSchema,
  sentence,
  sizeOf,
  startPage,
  submitJob,
} from "./common.js";

const form = document.getElementById("generate");
const problem = document.getElementById("form-error");
const submit = document.getElementById("submit");

function describe(job) {
  const r = job.request;
  const rows = [["Prompt", r.prompt]];
  if (r.negative_prompt) rows.push(["Negative", r.negative_prompt]);
  rows.push(["Size", sizeOf(job)], ["Steps", r.num_inference_steps ?? "default"]);
  rows.push(["Guidance", r.guidance_scale ?? "default"], ["Seed", r.seed]);
  if ((r.num_images_per_prompt || 1) > 1) rows.push(["Images", r.num_images_per_prompt]);
  return rows;
}

/** Put a job's request (with one image's seed) back in the form and submit it: that image again. */
function remake(job, file) {
  for (const input of form.querySelectorAll("[data-field]")) {
    const value = job.request[input.dataset.field];
    input.value = value === null || value === undefined ? "" : value;
  }
  form.querySelector("#seed").value = file.seed;
  form.querySelector("#num_images_per_prompt").value = 1;
  form.requestSubmit();
}

function showResult(results, job) {
  for (const file of job.result.files) {
    const label = `Image ${file.output + 1}, seed ${file.seed}`;
    const image = element("img", {
      src: outputPath(file.url),
      alt: `${label}: ${job.request.prompt}`,
      width: job.result.width,
      height: job.result.height,
    });
    const again = element("button", { type: "button", class: "secondary", text: "Remake" });
    again.addEventListener("click", () => remake(job, file));
    const edit = element("button", { type: "button", class: "secondary", text: "Image to image" });
    edit.addEventListener("click", () => editor.open(job, file));
    results.append(
      element(
        "figure",
        {},
        image,
        element("figcaption", { text: label }),
        element("div", { class: "buttons" }, downloadLink(file, `Download ${file.format.toUpperCase()}`), again, edit),
      ),
    );
  }
}

// --- image to image ----------------------------------------------------------------------------------

const editor = {
  form: document.getElementById("edit"),
  source: null,
  controller: null,

  async start() {
    applyLimits(this.form, await requestSchema("ImageEditRequest"));
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.run();
    });
    document.getElementById("edit-cancel").addEventListener("click", () => this.controller?.abort());
    document.getElementById("edit-close").addEventListener("click", () => {
      this.controller?.abort();
      this.form.hidden = true;
      submit.focus();
    });
  },

  open(job, file) {
    this.source = { job, file };
    document.getElementById("edit-source").src = outputPath(file.url);
    document.getElementById("edit-prompt").value = job.request.prompt;
    document.getElementById("edit-steps").value = job.request.num_inference_steps ?? "";
    document.getElementById("edit-seed").value = file.seed;
    document.getElementById("edit-error").textContent = "";
    document.getElementById("edit-status").textContent = "";
    this.form.hidden = false;
    document.getElementById("edit-title").focus();
  },

  async run() {
    const { job, file } = this.source;
    const status = document.getElementById("edit-status");
    const error = document.getElementById("edit-error");
    const button = document.getElementById("edit-submit");
    const cancel = document.getElementById("edit-cancel");
    error.textContent = "";
    button.disabled = true;
    cancel.hidden = false;
    this.controller = new AbortController();
    status.textContent = "Redrawing...";
    try {
      const picture = await (await fetch(outputPath(file.url))).blob();
      const data = new FormData();
      data.append("image", picture, "image.png");
      for (const [name, value] of Object.entries(formBody(this.form))) data.append(name, value);
      if (job.request.negative_prompt) data.append("negative_prompt", job.request.negative_prompt);
      if (job.request.guidance_scale != null) data.append("guidance_scale", job.request.guidance_scale);
      data.append("size", `${job.result.width}x${job.result.height}`);
      data.append("response_format", "url");
      const response = await api("v1/images/edits", { method: "POST", body: data, signal: this.controller.signal });
      const answer = await response.json();
      const results = document.getElementById("edit-results");
      results.replaceChildren();
      for (const [k, item] of answer.data.entries()) {
        const made = { url: item.url, format: answer.output_format };
        results.append(
          element(
            "figure",
            {},
            element("img", { src: outputPath(item.url), alt: `Redrawn image ${k + 1}: ${data.get("prompt")}` }),
            element("div", { class: "buttons" }, downloadLink(made, `Download ${made.format.toUpperCase()}`)),
          ),
        );
      }
      status.textContent = "Done.";
    } catch (failure) {
      status.textContent = "";
      error.textContent = failure.name === "AbortError" ? "Cancelled." : sentence(failure.message);
    } finally {
      button.disabled = false;
      cancel.hidden = true;
      this.controller = null;
    }
  },
};

const { gallery } = await startPage({
  service: "text2image",
  model: "Text2ImageRequest",
  form,
  page: { describe, showResult },
});
form.addEventListener("submit", (event) => {
  event.preventDefault();
  submitJob(gallery, formBody(form), { problem, button: submit });
});
editor.start();
document.body.dataset.ready = "true"; // for tests: every handler is in place
