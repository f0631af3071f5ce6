"""The operator console in a real headless Chromium against the running stack.

A non-admin is refused (403) on the page and on every admin API route; an admin sees the six
stages with live numbers while a job runs, finds the composer task dead-lettered on purpose
(``conftest.dead_letter_a_composer_task``), retries it and watches the job complete.
Screenshots: ``tests/artifacts/admin-*.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from montage_cli.client import MontageClient
from montage_contracts.pipeline import STAGES

from tests.admin.conftest import admin_token, dead_letter_a_composer_task
from tests.admin.test_api import API_ROUTES, ME, concrete
from tests.e2e.cdp import Page, chromium_page
from tests.stack import ARTIFACTS, RunningStack, unique

pytestmark = [pytest.mark.e2e]


async def sign_in(page: Page, url: str, user: str, *, admin: bool) -> None:
    await page.send("Page.navigate", url=f"{url}/admin/queues")
    await page.wait_for("document.readyState === 'complete' && document.body.dataset.ready === '1'", 20)
    if await page.eval("!!document.getElementById('signout-btn') && !document.getElementById('dev-form')"):
        await page.eval("document.getElementById('signout-btn').click()")  # the console: sign out first
        await page.wait_for("!!document.getElementById('dev-form') && document.body.dataset.ready === '1'", 20)
    await page.eval(f"document.getElementById('dev-user').value = {json.dumps(user)}")
    await page.eval(f"document.getElementById('dev-admin').checked = {json.dumps(admin)}")
    await page.eval("window.__signingIn = true; document.getElementById('dev-btn').click()")
    # the sign-in page reloads /admin/queues: a new window, without the marker
    await page.wait_for("!window.__signingIn && document.readyState === 'complete'"
                        " && document.body.dataset.ready === '1'", 20)  # fmt: skip
    assert await page.eval("!!document.getElementById('dev-btn')") is (not admin)


async def test_a_non_admin_is_refused_everywhere(e2e_stack: RunningStack, tmp_path: Path) -> None:
    async with chromium_page(tmp_path / "profile") as page:
        await page.send("Page.navigate", url=f"{e2e_stack.url}/admin/queues")
        await page.wait_for("document.body && document.body.dataset.ready === '1'", 20)
        assert await page.eval("document.body.dataset.status") == "401"
        await sign_in(page, e2e_stack.url, unique("plain"), admin=False)
        assert await page.eval("document.body.dataset.status") == "403"
        assert "not an admin" in await page.eval("document.getElementById('message').textContent")
        status = await page.eval("fetch('/admin/queues').then(r => r.status)")
        assert status == 403
        # every admin API route, from the page, with the user's token
        routes = [(m, concrete(p)) for m, p, _ in API_ROUTES]
        routes.append(("GET", ME))
        statuses = await page.eval(f"""(async () => {{
            const token = decodeURIComponent(document.cookie.match(/montage_admin=([^;]*)/)[1]);
            const out = [];
            for (const [method, path] of {json.dumps(routes)}) {{
                const r = await fetch(path, {{ method, headers: {{ Authorization: 'Bearer ' + token }} }});
                out.push(r.status);
            }}
            return out;
        }})()""")
        assert statuses == [403] * len(routes), list(zip(routes, statuses, strict=True))
        await page.screenshot(ARTIFACTS / "admin-forbidden.png")


async def test_an_admin_watches_retries_a_dead_letter_and_the_job_completes(
    e2e_stack: RunningStack, song: Path, tmp_path: Path
) -> None:
    admin_user = unique("ops-admin")
    async with chromium_page(tmp_path / "profile", width=1500, height=1100) as page, aiohttp.ClientSession() as session:
        try:
            await sign_in(page, e2e_stack.url, admin_user, admin=True)
            await page.wait_for("document.querySelectorAll('#queues tbody tr[data-stage]').length === 7", 20)
            rows = await page.eval("[...document.querySelectorAll('#queues tbody tr')].map(r => r.dataset.stage)")
            assert rows == [*STAGES, "results"]
            assert admin_user in await page.eval("document.getElementById('who').textContent")
            admin = MontageClient(session, e2e_stack.url, await admin_token(session, e2e_stack.url, admin_user))

            async def while_waiting_at_composer(job_id: str) -> None:
                # live numbers: the stopped composer's task shows as waiting or in flight, updated by polling
                polls = int(await page.eval("+document.body.dataset.polls"))
                await page.wait_for(
                    "(() => { const r = document.querySelector('#queues tr[data-stage=composer]');"
                    " const n = (k) => +r.querySelector(`[data-k=${k}]`).textContent;"
                    f" return n('waiting') + n('pending') >= 1 && +document.body.dataset.polls > {polls}; }})()",
                    30,
                )
                done = await page.eval(
                    "+document.querySelector('#queues tr[data-stage=video_generator] [data-k=throughput]').textContent"
                )
                assert done > 0  # the job's earlier stages finished moments ago
                await page.screenshot(ARTIFACTS / "admin-queues-live.png")

            dead = await dead_letter_a_composer_task(
                e2e_stack, admin, session, song, on_waiting=while_waiting_at_composer
            )
            try:
                await page.send("Page.navigate", url=f"{e2e_stack.url}/admin/queues#dead")
                await page.wait_for("document.body.dataset.ready === '1'", 20)
                row = f"#dead tr[data-entry='{dead.entry_id}']"
                await page.wait_for(f"!!document.querySelector({json.dumps(row)})", 20)
                text = await page.eval(f"document.querySelector({json.dumps(row)}).textContent")
                assert "NOT_FOUND" in text and dead.job_id[:8] in text and "failed" in text
                await page.wait_for(
                    "+document.querySelector('#queues tr[data-stage=composer] [data-k=dead_letters]').textContent >= 1",
                    20,
                )
                await page.screenshot(ARTIFACTS / "admin-dead-letter.png")
            finally:
                dead.restore_clips()
            await page.eval(f"document.querySelector({json.dumps(row + ' button.retry')}).click()")
            await page.wait_for("document.getElementById('flash').textContent.startsWith('Retried')", 20)
            await page.send("Page.navigate", url=f"{e2e_stack.url}/admin/queues#job/{dead.job_id}")
            await page.wait_for("document.body.dataset.jobStatus === 'completed'", 120)
            states = await page.eval(
                "[...document.querySelectorAll('#job-stages tr[data-stage]')].map(r => r.dataset.state)"
            )
            assert states == ["completed"] * 6
            actions = await page.eval("document.getElementById('job-actions').textContent")
            assert admin_user in actions and "dead_letter.retry" in actions
            await page.screenshot(ARTIFACTS / "admin-job-completed.png")
        except BaseException:
            await page.screenshot(ARTIFACTS / "admin-failure.png")
            raise
