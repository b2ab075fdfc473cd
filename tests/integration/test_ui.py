"""The web page of each service (GET /) in a real headless Chromium, against real `opea-media serve`
processes on the tiny models: load it, submit, follow the progress to the end, see the result,
download it, cancel a second job, and an error case shows the service's sentence.

The browser is Debian's chromium with its chromium-driver (scripts/chromium.sh installs both; .ci/run
runs it), driven by Selenium; OPEA_MEDIA_CHROMIUM and OPEA_MEDIA_CHROMEDRIVER name others (GitHub's
runners have Google Chrome and its driver). Without them the tests skip with a warning, and with
CI=true they fail instead.

OPEA_MEDIA_SCREENSHOTS=docs python -m pytest tests/integration/test_ui.py writes the screenshots
docs/ui.md shows (docs/ui-text2image.png, docs/ui-image2video.png); otherwise they go to a temporary
folder, taken all the same.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from .docker_env import unavailable
from .live_service import LiveService, start_service

API_KEY = "ui-test-key"
WAIT = 90.0  # seconds any one thing may take on a busy 2-core machine
DESKTOP = (1100, 1000)
PHONE = (390, 844)
SCREENSHOTS_ENV = "OPEA_MEDIA_SCREENSHOTS"
# Records every state text and progress value the page shows, so a test sees each step even
# when it looks less often than the page updates.
RECORDER = """
window.__seen = [];
new MutationObserver(() => {
  for (const card of document.querySelectorAll('.job')) {
    const bar = card.querySelector('progress');
    window.__seen.push([card.dataset.job, card.querySelector('.job-state').textContent,
                        bar.getAttribute('value'), bar.getAttribute('max')]);
  }
}).observe(document.getElementById('gallery'),
           {subtree: true, childList: true, attributes: true, characterData: true});
"""


def _browser_paths() -> tuple[str, str]:
    browser = (
        os.environ.get("OPEA_MEDIA_CHROMIUM") or shutil.which("chromium") or shutil.which("google-chrome")
    )
    driver = os.environ.get("OPEA_MEDIA_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        unavailable(
            "no Chromium and chromium-driver (bash scripts/chromium.sh installs Debian's)", "browser tests"
        )
    return browser, driver  # type: ignore[return-value]


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[dict[str, LiveService]]:
    """Both services at once (their start-ups overlap); text2image with an API key."""
    _browser_paths()  # no servers for nothing
    logs = tmp_path_factory.mktemp("ui")
    started = {
        "text2image": start_service("text2image", "--api-key", API_KEY, log_dir=logs, cache_dir=cache_dir),
        "image2video": start_service("image2video", log_dir=logs, cache_dir=cache_dir),
    }
    try:
        for live in started.values():
            live.wait_ready()
        yield started
    finally:
        for live in started.values():
            live.kill()


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    try:
        yield driver
    finally:
        driver.quit()


# --- helpers ---------------------------------------------------------------------------------------


def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.05)


def js(browser: Any, script: str, *args: Any) -> Any:
    return browser.execute_script(script, *args)


def open_page(browser: Any, live: LiveService) -> None:
    browser.set_window_size(*DESKTOP)
    browser.get(live.url("/"))
    until(lambda: js(browser, "return document.body.dataset.ready === 'true'"), "the page's script ran")
    js(browser, RECORDER)
    until(lambda: "ready" in text(browser, "#health") and "tiny" in text(browser, "#health"), "health shown")


def text(browser: Any, selector: str) -> str:
    return js(
        browser, "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", selector
    )


def fill(browser: Any, values: dict[str, Any]) -> None:
    for element_id, value in values.items():
        field = browser.find_element("id", element_id)
        field.clear()
        field.send_keys(str(value))


def cards(browser: Any) -> list[dict[str, str]]:
    return js(
        browser,
        "return [...document.querySelectorAll('.job')].map(c => ({id: c.dataset.job, state: c.dataset.state,"
        " text: c.querySelector('.job-state').textContent}))",
    )


def newest_card(browser: Any, known: set[str]) -> str:
    """The id of the card that appeared after `known` (the page puts the newest first)."""
    return until(
        lambda: next((c["id"] for c in cards(browser) if c["id"] not in known), None), "a new job card"
    )


def card_state(browser: Any, job_id: str) -> str:
    return next((c["state"] for c in cards(browser) if c["id"] == job_id), "")


def seen(browser: Any, job_id: str) -> list[tuple[str, str | None, str | None]]:
    return [(t, v, m) for j, t, v, m in js(browser, "return window.__seen") if j == job_id]


def click(browser: Any, selector: str) -> None:
    browser.find_element("css selector", selector).click()


def downloaded(folder: Path, suffix: str) -> bytes:
    """The one finished download ending in `suffix` (Chromium writes .crdownload until done)."""

    def find() -> Path | None:
        found = [p for p in folder.iterdir() if p.name.endswith(suffix)]
        return found[0] if found and found[0].stat().st_size else None

    path = until(find, f"a downloaded {suffix}")
    data = path.read_bytes()
    path.unlink()
    return data


# The DELETE's answer (still running, cancel_requested) held back until after the stream said
# "cancelled", as a busy machine may deliver them: the card must stay cancelled.
SLOW_DELETE = """
const fetchNow = window.fetch;
window.fetch = async (url, options) => {
  const response = await fetchNow(url, options);
  if (options && options.method === 'DELETE') await new Promise(done => setTimeout(done, 2000));
  return response;
};
"""


def cancel_a_running_job(browser: Any, submit: str) -> None:
    """Submit (the form holds a long job), wait until it runs a step, cancel it, see it cancelled."""
    js(browser, SLOW_DELETE)
    known = {c["id"] for c in cards(browser)}
    click(browser, submit)
    job = newest_card(browser, known)
    until(lambda: "step" in next(c["text"] for c in cards(browser) if c["id"] == job), "the long job running")
    click(browser, f'.job[data-job="{job}"] .cancel')
    try:
        until(lambda: card_state(browser, job) == "cancelled", "the job cancelled")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page shows {cards(browser)}; {seen(browser, job)[-5:]}") from None
    time.sleep(2.5)  # the DELETE's late answer, for sure
    assert text(browser, f'.job[data-job="{job}"] .job-state') == "Cancelled."


def check_layout(browser: Any) -> None:
    """Every control has a label; at phone width nothing needs a sideways scroll."""
    unlabelled = js(
        browser,
        "return [...document.querySelectorAll('main input, main textarea')]"
        ".filter(e => !e.labels || !e.labels.length).map(e => e.id)",
    )
    assert not unlabelled, unlabelled
    browser.set_window_size(*PHONE)
    until(lambda: js(browser, "return window.innerWidth") < 500, "the phone width")
    overflow = js(browser, "return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"{overflow} px wider than a phone's screen"
    browser.set_window_size(*DESKTOP)


def screenshot(browser: Any, name: str, tmp_path: Path) -> None:
    """A full-page PNG, quantised so that the committed ones stay small."""
    folder = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path)
    height = js(browser, "return document.documentElement.scrollHeight")
    browser.set_window_size(DESKTOP[0], min(max(height + 120, 600), 1800))
    js(browser, "window.scrollTo(0, 0); document.activeElement.blur()")
    time.sleep(0.3)
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(folder / name, optimize=True)
    browser.set_window_size(*DESKTOP)


# --- text2image ------------------------------------------------------------------------------------


def test_text2image_page(
    browser: Any, services: dict[str, LiveService], downloads: Path, tmp_path: Path
) -> None:
    live = services["text2image"]
    started = time.monotonic()
    open_page(browser, live)
    # Limits and defaults come from /openapi.json.
    steps = browser.find_element("id", "num_inference_steps")
    assert (steps.get_attribute("max"), steps.get_attribute("value")) == ("150", "25")

    # The service has a key: the first call answers 401 and the page asks for it; a wrong one again.
    fill(
        browser,
        {
            "prompt": "a lighthouse at dusk",
            "width": 128,
            "height": 128,
            "num_inference_steps": 16,
            "seed": 7,
            "num_images_per_prompt": 2,
        },
    )
    click(browser, "#submit")
    until(lambda: js(browser, "return document.getElementById('key-dialog').open"), "the key asked for")
    browser.find_element("id", "api-key").send_keys("not-the-key\n")
    until(
        lambda: js(
            browser,
            "const d = document.getElementById('key-dialog');"
            " return d.open && !d.querySelector('.key-wrong').hidden",
        ),
        "the wrong key refused",
    )
    browser.find_element("id", "api-key").send_keys(API_KEY + "\n")
    job = newest_card(browser, set())
    until(lambda: card_state(browser, job) == "succeeded", "the job done")
    assert js(browser, "return sessionStorage.getItem('opea-media:api-key')") == API_KEY
    shown = seen(browser, job)
    steps_seen = {int(v) for t, v, m in shown if t.startswith("Denoising: step") and m == "16"}
    assert len(steps_seen) >= 3, shown  # step by step (a busy machine may merge a few)
    assert ("Decoding...", "16", "16") in shown, shown  # the last step done, the images decoded
    card = f'.job[data-job="{job}"]'
    until(
        lambda: (
            js(
                browser,
                f"return [...document.querySelectorAll('{card} img')]"
                ".filter(i => i.complete && i.naturalWidth === 128).length",
            )
            == 2
        ),
        "both images shown",
    )
    assert "Seed7" in text(browser, f"{card} .job-params").replace(" ", "")

    # An invalid value: the service's sentence, naming the field.
    fill(browser, {"num_inference_steps": 500})
    click(browser, "#submit")
    until(lambda: text(browser, "#form-error"), "the refusal shown")
    assert text(browser, "#form-error").startswith("num_inference_steps: "), text(browser, "#form-error")

    # Download the first image: the PNG the job made.
    click(browser, f"{card} figure a[download]")
    png = Image.open(io.BytesIO(downloaded(downloads, ".png")))
    assert (png.format, png.size, png.info.get("seed")) == ("PNG", (128, 128), "7"), png.info

    # Remake the second image: one image, with its own seed.
    known = {c["id"] for c in cards(browser)}
    browser.find_elements("css selector", f"{card} figure button")[2].click()  # image 2's Remake
    remade = newest_card(browser, known)
    until(lambda: card_state(browser, remade) == "succeeded", "the remade job done")
    assert js(browser, f"return document.querySelectorAll('.job[data-job=\"{remade}\"] img').length") == 1
    assert "Seed8" in text(browser, f'.job[data-job="{remade}"] .job-params').replace(" ", "")

    # Image to image (OpenAI's edits) from the first image.
    browser.find_elements("css selector", f"{card} figure button")[1].click()  # image 1's Image to image
    until(lambda: js(browser, "return !document.getElementById('edit').hidden"), "the edit form")
    click(browser, "#edit-submit")
    until(lambda: text(browser, "#edit-status") == "Done." or text(browser, "#edit-error"), "the edit done")
    assert not text(browser, "#edit-error"), text(browser, "#edit-error")
    until(
        lambda: js(
            browser,
            "const i = document.querySelector('#edit-results img');"
            " return i && i.complete && i.naturalWidth === 128",
        ),
        "the redrawn image",
    )

    # A long job, cancelled while it runs.
    fill(browser, {"num_inference_steps": 150, "width": 256, "height": 256, "num_images_per_prompt": 1})
    cancel_a_running_job(browser, "#submit")
    screenshot(browser, "ui-text2image.png", tmp_path)

    # The gallery is this browser's: a reload shows the same jobs again.
    ids = [c["id"] for c in cards(browser)]
    open_page(browser, live)
    until(lambda: [c["id"] for c in cards(browser)] == ids, "the gallery restored")
    check_layout(browser)
    print(f"\ntext2image page: {time.monotonic() - started:.1f} s")


# --- image2video -----------------------------------------------------------------------------------


def test_image2video_page(
    browser: Any, services: dict[str, LiveService], downloads: Path, tmp_path: Path
) -> None:
    live = services["image2video"]
    started = time.monotonic()
    open_page(browser, live)
    picture = tmp_path / "input.png"
    Image.new("RGB", (96, 64), (200, 120, 40)).save(picture)

    click(browser, "#submit")  # no image yet: said in the page, nothing sent
    assert text(browser, "#form-error") == "Choose an image, drop one, or give its URL."
    browser.find_element("id", "image-file").send_keys(str(picture))
    until(
        lambda: js(browser, "return document.getElementById('image-preview').naturalWidth") == 96,
        "the preview",
    )

    fill(browser, {"motion_bucket_id": 5000})  # refused by the service, in its words
    click(browser, "#submit")
    until(lambda: text(browser, "#form-error").startswith("motion_bucket_id: "), "the refusal shown")

    fill(
        browser,
        {
            "motion_bucket_id": 100,
            "num_frames": 3,
            "num_inference_steps": 3,
            "fps": 6,
            "width": 64,
            "height": 64,
            "seed": 11,
        },
    )
    click(browser, "#submit")
    job = newest_card(browser, set())
    until(lambda: card_state(browser, job) == "succeeded", "the clip done")
    shown = seen(browser, job)
    texts = [t for t, _v, _m in shown]
    assert "Encoding the image..." in texts, shown  # before the first step (the bar undetermined)
    assert any(t.startswith("Denoising: step") for t in texts), shown
    assert ("Decoding...", "3", "3") in shown, shown  # after the last step
    card = f'.job[data-job="{job}"]'
    until(
        lambda: js(
            browser,
            f"const v = document.querySelector('{card} video');"
            " return v && v.readyState >= 2 && v.duration > 0",
        ),
        "the clip playable",
    )
    assert js(browser, f"return document.querySelector('{card} video').videoWidth") == 64

    click(browser, f'{card} a[download$=".mp4"]')
    assert downloaded(downloads, ".mp4")[4:8] == b"ftyp"
    click(browser, f'{card} a[download$=".gif"]')
    gif = Image.open(io.BytesIO(downloaded(downloads, ".gif")))
    assert (gif.format, gif.size, gif.n_frames) == ("GIF", (64, 64), 3)

    fill(browser, {"num_inference_steps": 150, "num_frames": 4})
    cancel_a_running_job(browser, "#submit")
    screenshot(browser, "ui-image2video.png", tmp_path)
    check_layout(browser)
    print(f"\nimage2video page: {time.monotonic() - started:.1f} s")
