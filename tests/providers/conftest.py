"""Fixtures of the provider tests: the OpenAI-compatible fake in-process, and stage contexts
whose settings point every seam at it (low resolution, short timeouts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from montage_common.storage import LocalStorage
from montage_contracts.models import CostItem
from montage_dev.fakes.openai import FakeOpenAI, create_app
from montage_stages.runtime.context import StageContext
from montage_stages.runtime.provider_http import Providers
from montage_stages.runtime.settings import StageSettings

from tests.ragnarok.conftest import (  # noqa: F401 - the proxy's fixtures, for the clip tests
    fake_ragnarok,
    fake_trinity,
    parked_jobs,
    proxy,
    proxy_settings,
    start_proxy,
)


class Fake:
    """The running fake: its base URL, its state, and its control endpoint."""

    def __init__(self, server: TestServer, state: FakeOpenAI) -> None:
        self.server, self.state = server, state
        self.url = str(server.make_url("/v1"))

    async def control(self, **body: Any) -> None:
        async with aiohttp.ClientSession() as s, s.post(str(self.server.make_url("/_control")), json=body) as r:
            assert r.status == 200, await r.text()

    def requests(self, endpoint: str) -> list[dict[str, Any]]:
        return [r for r in self.state.requests if r["endpoint"] == endpoint]


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    app, state = create_app(FakeOpenAI(api_key="sk-test"))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield Fake(server, state)
    state.released.set()
    await server.close()


class Costs(list[CostItem]):
    """The context's cost callback, keeping what it is given."""

    async def __call__(self, item: CostItem) -> None:
        self.append(item)

    def __bool__(self) -> bool:  # a callback, even while empty
        return True


@pytest.fixture
def costs() -> Costs:
    return Costs()


@pytest.fixture
async def providers() -> AsyncIterator[Providers]:
    p = Providers()
    yield p
    await p.aclose()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage", "test-signing-key", "http://127.0.0.1:1")


@pytest.fixture
def make_ctx(
    fake: Fake, costs: Costs, providers: Providers, storage: LocalStorage, tmp_path: Path
) -> Callable[..., StageContext]:
    """``make_ctx(**settings)``: a context whose text, lyrics and image seams use the fake."""

    def make(job_id: str = "job1", **overrides: Any) -> StageContext:
        settings = StageSettings(
            **{
                "video_width": 160,
                "video_height": 90,
                "video_fps": 12,
                "llm_url": fake.url,
                "llm_api_key": "sk-test",
                "stt_url": fake.url,
                "stt_api_key": "sk-test",
                "image_provider_url": fake.url,
                "image_provider_api_key": "sk-test",
                "image_provider_size": "256x144",
                "llm_timeout_seconds": 5.0,
                "stt_timeout_seconds": 5.0,
                "image_timeout_seconds": 5.0,
                **overrides,
            }
        )
        return StageContext.create(
            job_id, storage, settings=settings, workdir=tmp_path / "work" / job_id, cost=costs, providers=providers
        )

    return make
