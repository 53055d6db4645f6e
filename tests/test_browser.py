"""The app in a real browser: Debian's chromium, headless, driven by Playwright.

One walk through the product: talk to it with an example clip, inspect the attention,
run a small SER evaluation, rate two items and see them in the results. Screenshots go
to ci-artifacts/screenshots/ (SEMOLLAMA_ARTIFACTS overrides the folder).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest_plugins = ["conftest_app"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[1]
STEP_TIMEOUT_MS = 90_000

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium at /usr/bin/chromium")


@pytest.fixture(scope="module")
def screenshots() -> Path:
    folder = Path(os.environ.get("SEMOLLAMA_ARTIFACTS") or ROOT / "ci-artifacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(app_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        page.goto(app_server.url, wait_until="domcontentloaded")
        yield page
        browser.close()


def textarea_filled(page, elem_id: str) -> None:
    page.wait_for_function(
        "id => { const t = document.querySelector(`#${id} textarea`); return t && t.value.trim().length > 0; }",
        arg=elem_id, timeout=STEP_TIMEOUT_MS)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def test_talk_uploads_an_example_and_streams_three_answers(page, app_server, screenshots):
    # Once the models are up the configuration shows and the token budget drops to the tests' 8.
    page.locator("#talk-config").get_by_text("Running configuration").wait_for()
    page.locator("#talk-audio input[type=file]").set_input_files(str(app_server.examples_dir / "angry_1.wav"))
    page.locator("#talk-audio audio, #talk-audio .waveform-container, #talk-audio [data-testid='waveform-x']") \
        .first.wait_for(state="attached")
    page.locator("#talk-run").click()
    for name in ("speech_llm", "text_only", "cascade"):
        textarea_filled(page, f"talk-{name}")
    page.locator("#talk-chart .js-plotly-plot").wait_for()
    page.get_by_text("first token").nth(2).wait_for()  # the cascade's latency, written last
    assert "new office" in page.locator("#talk-transcript textarea").input_value().lower()
    assert "Predicted emotion:" in page.locator("#talk-emotion").inner_text()
    tokens = re.search(r"(\d+) tokens", page.locator("#talk-latency-speech_llm").inner_text())
    assert tokens and 1 <= int(tokens.group(1)) <= 8
    page.screenshot(path=str(screenshots / "1-talk.png"), full_page=True)


def test_inspect_shows_the_heatmap_of_the_last_clip(page, screenshots):
    open_tab(page, "Inspect")
    page.locator("#inspect-run").click()
    page.locator("#inspect-heatmap .js-plotly-plot").wait_for()
    page.locator("#inspect-share .js-plotly-plot").wait_for()
    assert "layers" in page.locator("#inspect-summary").inner_text()
    assert page.locator("#inspect-heatmap .heatmaplayer, #inspect-heatmap .hm").count() >= 1
    page.screenshot(path=str(screenshots / "2-inspect.png"), full_page=True)


def test_evaluate_runs_a_small_batch(page, screenshots):
    open_tab(page, "Evaluate")
    assert not page.locator("#eval-zip").is_visible()  # bundled examples need no upload
    page.locator("#eval-source").get_by_text("upload", exact=True).click()
    page.locator("#eval-zip").wait_for(state="visible")
    page.locator("#eval-source").get_by_text("bundled examples", exact=True).click()
    page.locator("#eval-zip").wait_for(state="hidden")
    page.locator("#eval-limit input").fill("4")
    page.locator("#eval-run").click()
    page.locator("#eval-confusion .js-plotly-plot").wait_for()
    page.locator("#eval-metrics").get_by_role("gridcell", name="speech_llm").wait_for()
    assert "text_only" in page.locator("#eval-metrics").inner_text()
    assert "happy_1.wav" in page.locator("#eval-items").inner_text()
    page.screenshot(path=str(screenshots / "3-evaluate.png"), full_page=True)


def test_rate_two_items_and_see_them_in_the_results(page, app_server, screenshots):
    open_tab(page, "Rate")
    page.locator("#rate-annotator input, #rate-annotator textarea").first.fill("browser_annotator")
    page.locator("#rate-start").click()
    textarea_filled(page, "rate-response-a")
    for rated, choice in ((1, "A"), (2, "tie")):
        page.locator("#rate-choice").get_by_text(choice, exact=True).click()
        page.locator("#rate-submit").click()
        page.locator("#rate-status").get_by_text(f"{rated} of 4 items rated").wait_for()
    page.screenshot(path=str(screenshots / "4-rate.png"), full_page=True)
    page.locator("#rate-results-panel").get_by_text("Results").first.click()
    page.locator("#rate-password input").fill(app_server.admin_password)
    page.locator("#rate-results").click()
    page.locator("#rate-pairs").get_by_role("gridcell", name=" vs ").first.wait_for()
    overview = page.locator("#rate-overview").inner_text()
    assert "ratings" in overview
    page.screenshot(path=str(screenshots / "5-results.png"), full_page=True)
    assert all((screenshots / f"{n}.png").stat().st_size > 0
               for n in ("1-talk", "2-inspect", "3-evaluate", "4-rate", "5-results"))
