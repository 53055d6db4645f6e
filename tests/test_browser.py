"""The app in a real browser: Debian's chromium, headless, driven by Playwright.

One walk through the product: talk to it with an example clip, inspect the attention,
run a small SER evaluation, rate two items and see them in the results. Screenshots go
to ci-artifacts/screenshots/ (SEMOLLAMA_ARTIFACTS overrides the folder).
"""
from __future__ import annotations

import json
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


LABEL_WORDS = ("neutral", "happy", "sad", "angry", "calm", "fear", "fearful", "disgust", "surprise", "surprised")
SYSTEM_NAMES = ("speech_llm", "text_only", "cascade", "neutral_aligned", "oracle", "speech_only", "emotion_head",
                "standalone", "attention_copy", "attention_distractor")
# Letters-only boundaries: "angry_1.wav" and "sad," count, "sadly" and "unhappy" do not.
LEAK = re.compile(r"(?<![a-z])(" + "|".join(LABEL_WORDS + SYSTEM_NAMES) + r")(?![a-z])", re.IGNORECASE)


def leaks(text: str, responses: list[str]) -> list[str]:
    """Label words and system names in text, once the replies being rated are taken out:
    a reply may itself speak of feelings; that is what the annotator judges."""
    for response in sorted(responses, key=len, reverse=True):
        if response:
            text = text.replace(response, " ")
    text = re.sub(r"--[\w-]+", " ", text)  # the theme's CSS variables (var(--neutral-400)) say nothing of an item
    return sorted({m.group(0) for m in LEAK.finditer(text)})


def test_a_rating_session_shows_no_label_and_no_system_name(page, app_server, screenshots):
    from gradio_client import Client

    annotator = page.context.browser.new_page(viewport={"width": 1400, "height": 1000})  # a session of its own
    annotator.set_default_timeout(STEP_TIMEOUT_MS)
    requested = []
    annotator.on("request", lambda request: requested.append(request.url))
    annotator.goto(app_server.url + "rate", wait_until="domcontentloaded")
    annotator.locator("#rate-guidelines").get_by_text("Both bad").first.wait_for()
    annotator.locator("#rate-annotator input, #rate-annotator textarea").first.fill("browser_annotator")
    annotator.locator("#rate-start").click()
    textarea_filled(annotator, "rate-response-a")
    annotator.locator("#rate-audio audio").first.wait_for(state="attached")
    responses = [annotator.locator(f"#rate-response-{side} textarea").input_value() for side in ("a", "b")]
    visible = annotator.locator("body").inner_text()
    attributes = annotator.evaluate(
        "() => [...document.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.value)).join('\\n')")
    audio_urls = annotator.evaluate(
        "() => [...document.querySelectorAll('#rate-audio [src], #rate-audio [href]')]"
        ".map(e => e.getAttribute('src') || e.getAttribute('href')).join('\\n')")
    assert "/gradio_api/file=" in audio_urls and audio_urls.count(".wav") >= 1
    for name, text in (("visible text", visible), ("attributes", attributes), ("audio URLs", audio_urls),
                       ("served HTML", annotator.content()), ("requested URLs", "\n".join(requested))):
        assert not leaks(text, responses), (name, leaks(text, responses))
    # The rating endpoints' API answers, as any client gets them.
    client = Client(app_server.url, verbose=False)
    answers = [client.predict("api_blind_check", api_name="/rate_next")]
    answers.append(client.predict(api_name="/rate_skip"))
    answers.append(client.predict("both_bad", 2, 2, 2, 2, "", api_name="/rate_submit"))
    for answer in answers:
        assert not leaks(json.dumps(answer), list(answer[3:5])), leaks(json.dumps(answer), list(answer[3:5]))
    annotator.screenshot(path=str(screenshots / "4-rate.png"), full_page=True)

    # Keyboard: 4 = both bad, Enter = submit, S = skip; every vote is timed.
    annotator.locator("#rate-status").click()  # focus out of the text box
    for rated, key in ((1, "4"), (2, "1"), (3, "3")):
        annotator.keyboard.press(key)
        annotator.keyboard.press("Enter")
        annotator.locator("#rate-status").get_by_text(f"{rated} of 6 items rated").wait_for()
    annotator.keyboard.press("s")
    annotator.locator("#rate-status").get_by_text("skipped for later").wait_for()
    mine = [r for r in app_server.demo.backend.store.export_ratings(app_server.admin_password)
            if r["annotator_id"] == "browser_annotator"]
    assert [r["choice"] for r in mine] == ["both_bad", "A", "tie"]
    assert all(r["time_spent_s"] > 0 for r in mine)
    annotator.close()

    open_tab(page, "Rate")
    page.locator("#rate-results-panel").get_by_text("Results").first.click()
    page.locator("#rate-password input").fill(app_server.admin_password)
    page.locator("#rate-results").click()
    page.locator("#rate-pairs").get_by_role("gridcell", name=" vs ").first.wait_for()
    assert "Krippendorff" in page.locator("#rate-overview").inner_text()
    page.screenshot(path=str(screenshots / "5-results.png"), full_page=True)
    assert all((screenshots / f"{n}.png").stat().st_size > 0
               for n in ("1-talk", "2-inspect", "3-evaluate", "4-rate", "5-results"))
