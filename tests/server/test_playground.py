"""The playground in a real headless Chromium (Debian's, driven by Playwright), against the real server on the
tiny model: it loads offline with no console error, runs columns side by side, streams, shows every candidate
with the API's choice marked, flags bad values before sending and the server's 400 next to the right field,
needs the key when the server does, and never runs what a model writes. A screenshot is kept for people."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import expect

from serverproc import API_KEY

# The page's Content-Security-Policy forbids eval, so waits are Playwright locator expectations, which need none
# (wait_for_function would evaluate a string in the page).
ARTIFACTS = Path(os.environ.get("ALIGND_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "Chromium is missing: `make test` installs Debian's chromium package (apt-get install chromium)"
    return found


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@contextlib.contextmanager
def _watched_page(browser):
    """A fresh page that records console errors and every host it reaches."""
    context = browser.new_context(viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.errors, page.hosts = [], set()  # type: ignore[attr-defined]
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.hosts.add(r.url.split("/")[2]))
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(browser, server):
    with _watched_page(browser) as page:
        yield page


def _open(page, server, key: str | None = API_KEY):
    if key is not None:  # as if the user had typed it earlier in this tab: the page reads session storage
        page.add_init_script(f"sessionStorage.setItem('alignd.apiKey', {json.dumps(key)})")
    page.goto(server.url + "/")  # redirects to /playground
    assert page.url.endswith("/playground")
    expect(page.locator(".column")).to_have_count(2)
    expect(page.locator("#model option")).not_to_have_count(0)
    expect(page.locator(".column select.decoder option").first).to_be_attached()


def _wait_done(page) -> None:
    for status in page.locator(".column .status").all():
        expect(status).to_have_text(re.compile(r"^(done|fix)"), timeout=120_000)


def _column(page, i: int):
    return page.locator(".column").nth(i)


def _set_decoder(page, i: int, name: str) -> None:
    _column(page, i).locator("select.decoder").select_option(name)


def _rewards_only(page, i: int, names: set[str]) -> None:
    for row in _column(page, i).locator(".reward").all():
        checked = row.get_attribute("data-reward") in names
        row.locator("input.use").set_checked(checked)


def test_without_the_key_the_page_says_so_and_with_it_works(page, server):
    page.goto(server.url + "/playground")
    expect(page.locator("#banner")).to_contain_text("needs an API key")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model option")).not_to_have_count(0)
    expect(page.locator("#banner")).to_be_hidden()
    assert page.input_value("#model") == "tiny"
    assert page.evaluate("sessionStorage.getItem('alignd.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    # the only console errors are the browser's notes of the refused calls before the key was given
    assert page.errors and all("status of 401" in e for e in page.errors), page.errors
    assert page.hosts == {server.url.removeprefix("http://")}


def test_best_of_n_and_sample_side_by_side_streamed_with_candidates(page, server):
    _open(page, server)
    page.fill("#user", "Tell me about the sea.")
    _set_decoder(page, 0, "sample")
    _column(page, 0).locator('[data-param="max_tokens"]').fill("300")
    _set_decoder(page, 1, "best_of_n")
    _column(page, 1).locator('[data-param="decoder.num_candidates"]').fill("5")
    for i in (0, 1):
        _rewards_only(page, i, {"length"})
    # record every change of the sample column's answer while it streams
    page.evaluate(
        """() => { window.__growth = [];
        const el = document.querySelectorAll('.column')[0].querySelector('.answer');
        new MutationObserver(() => window.__growth.push(el.textContent.length))
          .observe(el, {childList: true, characterData: true, subtree: true}); }"""
    )
    with page.expect_response(
        lambda r: r.url.endswith("/v1/chat/completions") and "best_of_n" in r.request.post_data
    ) as info:
        page.click("#run")
    _wait_done(page)
    growth = page.evaluate("window.__growth")
    assert len(set(growth)) >= 3 and growth == sorted(growth)  # the text grew piece by piece
    # best_of_n: its 5 candidates with their rewards, the one the API chose marked
    events = [json.loads(line[6:]) for line in info.value.text().splitlines() if line.startswith("data: {")]
    chosen = next(e for e in events if e.get("alignment"))["alignment"]["choices"][0]["candidate_index"]
    items = _column(page, 1).locator(".candidates li")
    assert items.count() == 5
    assert [i for i in range(5) if "chosen" in (items.nth(i).get_attribute("class") or "")] == [chosen]
    assert "reward" in items.nth(0).inner_text()
    stats = _column(page, 1).locator(".stats").inner_text()
    assert "engine tokens" in stats and "engine calls" in stats and "time to first token" in stats
    # the chart has a point per column with a reward
    assert page.evaluate("document.querySelector('#frontier').toDataURL().length") > 5000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
    assert not page.errors, page.errors
    assert page.hosts == {server.url.removeprefix("http://")}  # nothing from anywhere else


def test_bad_values_are_flagged_before_sending_and_the_servers_400_next_to_its_field(page, server):
    _open(page, server)
    _set_decoder(page, 0, "best_of_n")
    field = _column(page, 0).locator('[data-param="decoder.num_candidates"]')
    field.fill("0")
    assert "invalid" in field.get_attribute("class")
    assert "at least 1" in _column(page, 0).locator(".field-error").inner_text()
    assert "structured output and forced tool calls" in _column(page, 0).locator(".supports").inner_text()
    # a value the form allows but this server refuses: top_k over the engine's 20 log-probs
    _set_decoder(page, 1, "deal")
    assert "grammar carried over committed tokens" in _column(page, 1).locator(".supports").inner_text()
    _rewards_only(page, 1, {"length"})
    _column(page, 1).locator('[data-param="decoder.top_k"]').fill("30")
    page.click("#run")
    expect(_column(page, 1).locator(".error")).to_contain_text("400")
    top_k = _column(page, 1).locator('[data-param="decoder.top_k"]')
    assert "invalid" in top_k.get_attribute("class")
    assert "max_logprobs" in top_k.locator("xpath=..").locator(".field-error").inner_text()
    assert "fix the fields" in _column(page, 0).locator(".status").inner_text()  # the invalid column never ran


def test_copy_gives_a_curl_command_and_an_openai_snippet(page, server):
    _open(page, server)
    _set_decoder(page, 1, "best_of_n")
    _column(page, 1).locator('[data-param="decoder.num_candidates"]').fill("3")
    _column(page, 1).locator(".copy-python").click()
    python = _column(page, 1).get_attribute("data-copied")
    assert "from openai import OpenAI" in python and "extra_body=" in python and '"num_candidates": 3' in python
    _column(page, 1).locator(".copy-curl").click()
    curl = _column(page, 1).get_attribute("data-copied")
    assert curl.startswith(f"curl -s {server.url}/v1/chat/completions") and '"name": "best_of_n"' in curl


def test_model_output_is_shown_as_text_and_never_runs(page, server):
    _open(page, server)
    payload = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> done'
    page.fill("#user", payload)
    _set_decoder(page, 0, "parrot")  # a test decoder that answers with the user's message
    _rewards_only(page, 0, set())
    page.locator(".column").nth(1).locator(".remove").click()
    page.click("#run")
    _wait_done(page)
    answer = _column(page, 0).locator(".answer")
    assert answer.inner_text() == payload
    assert "&lt;script&gt;" in answer.inner_html() and answer.locator("img, script").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert _column(page, 0).locator(".candidates img, .candidates script").count() == 0


@pytest.mark.slow
def test_on_the_default_model_best_of_n_beside_sample_with_the_judge(browser, default_server):
    with _watched_page(browser) as page:
        _open(page, default_server, key=None)  # the default server needs no key
        page.fill("#user", "Give me one tip for sleeping better.")
        _set_decoder(page, 0, "sample")
        _set_decoder(page, 1, "best_of_n")
        _column(page, 1).locator('[data-param="decoder.num_candidates"]').fill("4")
        for i in (0, 1):
            _column(page, i).locator('[data-param="max_tokens"]').fill("48")
            _rewards_only(page, i, {"judge"})
        page.click("#run")
        _wait_done(page)
        assert _column(page, 0).locator(".answer").inner_text().strip()
        items = _column(page, 1).locator(".candidates li")
        assert items.count() == 4
        assert len([i for i in range(4) if "chosen" in (items.nth(i).get_attribute("class") or "")]) == 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "playground-default-model.png"), full_page=True)
        assert not page.errors, page.errors
        assert page.hosts == {default_server.url.removeprefix("http://")}
