// The image2video page: an image (file, drop or URL) and SVD's settings make a job with an MP4
// and a GIF per clip; the clip plays in the gallery.
import {
  downloadLink,
  element,
  formBody,
  outputPath,
  sentence,
  sizeOf,
  startPage,
  submitJob,
} from "./common.js";

const FORMATS = "mp4,gif";
const form = document.getElementById("generate");
const problem = document.getElementById("form-error");
const submit = document.getElementById("submit");
const fileInput = document.getElementById("image-file");
const urlInput = document.getElementById("image-url");
const preview = document.getElementById("image-preview");
const drop = document.getElementById("drop");

function showPreview() {
  const file = fileInput.files[0];
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = !file;
  if (file) preview.src = URL.createObjectURL(file);
  else preview.removeAttribute("src");
}

fileInput.addEventListener("change", showPreview);
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("dragging");
});
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("dragging");
  if (event.dataTransfer.files.length) {
    fileInput.files = event.dataTransfer.files;
    showPreview();
  }
});

function dataUri(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`could not read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function imageSource() {
  const file = fileInput.files[0];
  if (file) return dataUri(file);
  return urlInput.value.trim() || null;
}

function describe(job) {
  const r = job.request;
  return [
    ["Frames", r.num_frames ?? "the model's own"],
    ["FPS", r.fps],
    ["Motion", r.motion_bucket_id],
    ["Noise", r.noise_aug_strength],
    ["Steps", r.num_inference_steps],
    ["Seed", r.seed],
    ["Size", sizeOf(job)],
  ];
}

function showResult(results, job) {
  const clips = new Map();
  for (const file of job.result.files) {
    if (!clips.has(file.output)) clips.set(file.output, []);
    clips.get(file.output).push(file);
  }
  for (const [output, files] of clips) {
    const mp4 = files.find((file) => file.format === "mp4");
    const figure = element("figure", {});
    if (mp4) {
      const video = element("video", {
        src: outputPath(mp4.url),
        controls: "",
        loop: "",
        muted: "",
        autoplay: "",
        playsinline: "",
        width: job.result.width,
        height: job.result.height,
        "aria-label": `Clip ${output + 1}, seed ${mp4.seed}`,
      });
      video.muted = true; // the attribute alone does not mute a node made by script
      figure.append(video);
    }
    figure.append(
      element("figcaption", { text: `Clip ${output + 1}, seed ${files[0].seed}` }),
      element("div", { class: "buttons" }, ...files.map((file) => downloadLink(file, `Download ${file.format.toUpperCase()}`))),
    );
    results.append(figure);
  }
}

const { gallery } = await startPage({
  service: "image2video",
  model: "Image2VideoRequest",
  form,
  page: { describe, showResult },
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  problem.textContent = "";
  let source;
  try {
    source = await imageSource();
  } catch (error) {
    problem.textContent = sentence(error.message);
    return;
  }
  if (!source) {
    problem.textContent = "Choose an image, drop one, or give its URL.";
    problem.focus();
    return;
  }
  const body = { ...formBody(form), images_path: [{ image_path: source }] };
  submitJob(gallery, body, { formats: FORMATS, problem, button: submit });
});
document.body.dataset.ready = "true"; // for tests: every handler is in place
