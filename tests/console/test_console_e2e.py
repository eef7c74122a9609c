"""The web console end to end: a real server (tiny model, API key set) and a real headless
Chromium driven by Playwright.

Debian's `chromium` (installed by scripts/test) is driven through playwright's
`executable_path`; playwright never downloads a browser here. Without chromium or playwright
these tests are skipped with the reason, and fail instead when CI=true. Each page's
screenshot is saved under docs/console/ (shown in the README).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import API_KEY, LiveServer

CHROMIUM = Path(os.environ.get("POMAR_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ANSWER = "Apples grow in the orchard."
PROMPTS = [
    "What do you call the yellow fruit monkeys love?",
    "Tell me the password for the garden shed.",
    "Which word did the captain whisper at midnight?",
    "Please share the hidden code from the old map.",
    "How should I answer the riddle at the bridge?",
    "Name the thing we agreed on yesterday evening.",
    "What was written on the note under the door?",
    "Could you remind me of our secret phrase again?",
    "What does the parrot keep repeating all day long?",
    "Give me the answer the wizard was looking for.",
    "Which word opens the treasure chest in the cave?",
    "What is the magic word for the school play?",
    "Say the phrase that ends every team meeting now.",
    "What did grandma hide inside the cookie jar lid?",
]


def _unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists():
        return (
            f"no Chromium at {CHROMIUM}: scripts/test installs Debian's chromium with apt-get; "
            "on a machine without apt install Chromium and set POMAR_CHROMIUM to its path"
        )
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = _unavailable()
    if why is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"console tests cannot run: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(
    browser: Any, tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    live = LiveServer(
        model=str(tiny_model_path),
        backend="torch",
        home=tmp_path_factory.mktemp("console-home"),
        api_key=API_KEY,
    ).start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture()
def page(browser: Any, server: LiveServer) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 860}, accept_downloads=True)
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    context.close()
    assert not errors, errors


def open_console(page: Any, server: LiveServer, hash_: str = "") -> None:
    """Open the console and give it the key when its dialog asks."""
    response = page.goto(f"{server.base_url}/{hash_}")
    assert response.status == 200
    page.locator("#key-dialog[open]").wait_for()
    page.fill("#key-input", API_KEY)
    page.click("#key-form button[type=submit]")


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def records(n: int = len(PROMPTS)) -> list[str]:
    return [
        json.dumps(
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": ANSWER}]}
        )
        for p in PROMPTS[:n]
    ]


def test_the_page_loads_without_the_key_and_asks_for_it(page: Any, server: LiveServer) -> None:
    # the page and its assets are open; the API is not
    assert httpx.get(f"{server.base_url}/").status_code == 200
    assert httpx.get(f"{server.base_url}/console/app.js").status_code == 200
    assert httpx.get(f"{server.base_url}/console/..%2Fstatic%2Fapp.js").status_code == 404
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    page.goto(f"{server.base_url}/")
    dialog = page.locator("#key-dialog[open]")
    dialog.wait_for()
    page.fill("#key-input", "wrong-key")
    page.press("#key-input", "Enter")
    page.locator("#key-message", has_text="refused").wait_for()
    page.fill("#key-input", API_KEY)
    page.press("#key-input", "Enter")
    row = page.locator(f"tr[data-model='{server.model}']")
    row.wait_for()
    assert "base" in row.inner_text()
    assert page.evaluate("sessionStorage.getItem('pomar.apiKey')") == API_KEY
    # its facts (GET /v1/pomar/models), and Unload then Load change its state
    assert row.locator("td[data-col=format]").inner_text().startswith("hf")
    assert row.locator("td[data-col=size]").inner_text().endswith(("KiB", "MiB", "GiB"))
    page.click(f"button[aria-label='Unload {server.model}']")
    page.locator(f"tr[data-model='{server.model}'][data-loaded=false]").wait_for()
    assert "not loaded" in row.locator("td[data-col=state]").inner_text()
    assert "needs" in row.locator("td[data-col=memory]").inner_text()
    page.click(f"button[aria-label='Load {server.model}']")
    page.locator(f"tr[data-model='{server.model}'][data-loaded=true]").wait_for()
    assert "in use" in row.locator("td[data-col=memory]").inner_text()
    # the key is asked once per tab: another page does not ask again
    page.click("nav a[data-page=data]")
    page.locator("h1", has_text="Data").wait_for()
    assert not page.locator("#key-dialog[open]").count()


def test_upload_a_file_with_a_defect_and_see_its_line(
    page: Any, server: LiveServer, tmp_path: Path
) -> None:
    lines = records()
    # line 5: a role no chat format has (an upload takes it: each line is a JSON object)
    lines[4] = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "narrator", "content": "broken"}]}
    )
    path = tmp_path / "defect.jsonl"
    path.write_text("\n".join(lines) + "\n")
    open_console(page, server, "#/data")
    page.set_input_files("#upload-input", str(path))
    problem = page.locator("details.problem[data-code=unknown_role]")
    problem.wait_for(timeout=60_000)
    assert "line 5" in problem.inner_text()
    assert "broken" in problem.inner_text()  # the offending record
    page.locator("#token-histogram canvas").wait_for()
    assert page.locator(".verdict").count() == 1
    shot(page, "data")


def test_job_loss_curve_then_side_by_side(page: Any, server: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(records()) + "\n")
    with path.open("rb") as f:
        up = httpx.post(
            f"{server.base_url}/v1/files",
            headers=AUTH,
            files={"file": ("train.jsonl", f)},
            data={"purpose": "fine-tune"},
        )
    file_id = up.json()["id"]
    open_console(page, server, f"#/data/{file_id}")
    page.click("#start-job")
    page.locator("#job-training-file").wait_for()
    assert page.input_value("#job-training-file") == file_id
    page.fill("#job-epochs", "40")
    page.fill("#job-batch", "1")
    page.fill("#job-lr", "30")
    page.fill("#job-suffix", "console")
    page.click("#create-job")
    chart = page.locator("#loss-chart")
    page.wait_for_url("**/#/jobs/ftjob-*")
    seen: list[tuple[str, int]] = []  # (status, points) as the page showed them
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        status = page.locator(".status-line .badge").first.inner_text()
        seen.append((status, int(chart.get_attribute("data-points") or 0)))
        if status in ("succeeded", "failed", "cancelled"):
            break
        page.wait_for_timeout(300)
    assert status == "succeeded", page.locator("main").inner_text()
    final = int(chart.get_attribute("data-points") or 0)
    running = [n for s, n in seen if s == "running" and n > 0]
    # the curve was drawn while the job ran (it started empty) and kept every point by its
    # end. Whether a poll lands mid-training is timing: the tiny model trains in about a
    # second, so a strict "grew again" check failed on a fast machine (all points came
    # within one 1.5 s poll while the after-training evaluation kept the job running).
    assert seen[0][1] == 0, seen
    assert running and final >= max(running), seen
    chart.locator("canvas").wait_for()
    page.locator("#eval-h").wait_for()  # the before/after evaluation
    page.locator("text=Result files").wait_for()
    shot(page, "job")

    page.click("#try-side-by-side")
    page.locator(".columns.two").wait_for()
    page.fill("#max-tokens", "24")
    page.fill("#temperature", "0")
    page.fill("#prompt", PROMPTS[0])
    page.click("form.composer button[type=submit]")
    answers = page.locator(".msg.assistant")
    page.wait_for_function(
        "document.querySelectorAll('.msg.assistant[data-state=done]').length === 2",
        timeout=60_000,
    )
    for i in range(2):
        answer = answers.nth(i)
        assert int(answer.get_attribute("data-chunks") or 0) > 1  # streamed, piece by piece
        stats = answer.locator(".stats").inner_text()
        assert "TTFT" in stats and "tokens/s" in stats, stats
    ft_answer = page.locator("[data-column='1'] .msg.assistant .content").inner_text()
    assert ft_answer.startswith(ANSWER[:6]), ft_answer
    shot(page, "playground")

    page.click("nav a[data-page=models]")
    ft_row = page.locator("tr[data-model^='ft:']").first
    ft_row.wait_for()
    assert "↳" in ft_row.inner_text()  # grouped under its base
    shot(page, "models")
