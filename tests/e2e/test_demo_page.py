"""The demo page in a real headless Chromium: sign in, upload, watch live (through a dropped
stream), play and download the video, list and cancel jobs. Saves
``tests/artifacts/demo-finished.png``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.cdp import Page, chromium_page
from tests.e2e.flows import PROMPT
from tests.stack import ARTIFACTS, RunningStack, unique

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
SCREENSHOT = ARTIFACTS / "demo-finished.png"


async def test_demo_page_runs_a_job_end_to_end(e2e_stack: RunningStack, song: Path, tmp_path: Path) -> None:
    user = unique("browser")
    async with chromium_page(tmp_path / "profile") as page:
        try:
            await drive(page, e2e_stack, song, user)
        except BaseException:
            await page.screenshot(ARTIFACTS / "demo-failure.png")
            raise
    assert SCREENSHOT.stat().st_size > 10_000


async def drive(page: Page, e2e_stack: RunningStack, song: Path, user: str) -> None:
    await page.send("Page.navigate", url=f"{e2e_stack.url}/demo")
    await page.wait_for("document.readyState === 'complete' && !!window.montageDemo", 20)

    # sign in with a development token
    await page.eval(f"document.getElementById('user').value = {json.dumps(user)}")
    await page.eval("document.getElementById('signin-btn').click()")
    await page.wait_for("document.body.dataset.signedIn === '1'", 10)
    assert user in await page.eval("document.getElementById('who').textContent")

    # upload a song with a prompt
    await page.set_files("#audio", [song])
    await page.eval(f"document.getElementById('prompt').value = {json.dumps(PROMPT)}")
    await page.eval("document.getElementById('upload-btn').click()")
    await page.wait_for("window.montageDemo.state.events >= 2", 30)

    # the network drops: the page gets a fresh ticket and resumes after the last event id
    await page.eval("window.montageDemo.dropStream()")
    await page.wait_for("document.body.dataset.finished", 150)
    assert await page.eval("document.body.dataset.finished") == "completed", page.console[-10:]
    state = await page.eval("JSON.stringify(window.montageDemo.state)")
    assert json.loads(state)["reconnects"] >= 1

    # every stage done, progress 100, a cost, and each event shown once
    stages = await page.eval("[...document.querySelectorAll('#stages li')].map(li => li.dataset.state)")
    assert stages == ["completed"] * 6
    assert await page.eval("document.getElementById('progress').textContent") == "100"
    assert (await page.eval("document.getElementById('cost').textContent")).startswith("$")
    ids = await page.eval("[...document.querySelectorAll('#log div')].map(d => d.textContent.split(' ')[0])")
    logged = [i for i in ids if i != "-"]
    assert len(logged) == len(set(logged)), "an event was shown twice after the reconnect"

    # the finished video plays in the page and the download link points at it
    duration = await page.wait_for(
        "(() => { const v = document.getElementById('video'); return v.readyState >= 1 && v.duration; })()", 20
    )
    assert float(duration) > 10
    href = await page.eval("document.getElementById('download-link').href")
    assert "sig=" in href and "expires=" in href

    # past jobs: the finished one is listed; a new job can be cancelled from the list
    await page.wait_for("!!document.querySelector('#jobs tr[data-job]')", 10)
    await page.eval("""new Promise((done) => { const v = document.getElementById('video');
        v.addEventListener('seeked', () => done(true), { once: true }); v.currentTime = 5; })""")
    await page.screenshot(SCREENSHOT)

    # a second job, cancelled as soon as it exists (jobs take seconds at test resolution)
    await page.eval("""new Promise((done) => {
        const before = window.montageDemo.state.jobId;
        document.getElementById('upload-btn').click();
        const tick = setInterval(() => {
            const s = window.montageDemo.state;
            if (s.jobId && s.jobId !== before) {
                clearInterval(tick); document.getElementById('cancel-btn').click(); done(true);
            }
        }, 10);
    })""")
    await page.wait_for("document.body.dataset.finished === 'failed'", 30)
    await page.wait_for("!!document.querySelector('#jobs .pill.failed')", 10)
    assert "cancelled" in (await page.eval("document.getElementById('job-error').textContent")).lower()
