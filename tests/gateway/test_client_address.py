"""The client's address behind 0, 1 and 2 trusted proxies: a client cannot choose its own address.

Each trusted proxy appends the address it received the request from; whatever the client wrote
into ``X-Forwarded-For`` stays on the left and is never read.
"""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient
from montage_gateway.client_address import effective_hops, forwarded_client

from tests.gateway.conftest import Gateways

PEER = "10.0.0.9"  # the TCP peer: the last proxy (or the client itself with no proxy)
CLIENT = "198.51.100.7"
LB = "10.0.0.4"
SPOOF = "203.0.113.66"


def via_proxies(client_sent: list[str], hops: int) -> list[str]:
    """X-Forwarded-For as ``hops`` appending proxies leave it: client (then LB) appended."""
    chain = [CLIENT, LB][:hops]  # the first proxy appends the client, the second the first proxy
    entries = client_sent + chain
    return [", ".join(entries)] if entries else []


@pytest.mark.parametrize("hops", [0, 1, 2])
@pytest.mark.parametrize(
    "client_sent",
    [[], [SPOOF], [SPOOF, "192.0.2.1"], ["unknown"], [f"{SPOOF}, {CLIENT}"]],
    ids=["none", "one-spoof", "two-spoofs", "garbage", "spoofs-the-client-too"],
)
def test_address_is_the_hops_th_from_the_right(hops: int, client_sent: list[str]) -> None:
    peer = CLIENT if hops == 0 else (LB if hops == 1 else PEER)
    assert forwarded_client(peer, via_proxies(client_sent, hops), hops) == CLIENT


def test_no_trusted_hops_ignores_the_header() -> None:
    assert forwarded_client(CLIENT, [SPOOF], 0) == CLIENT
    assert forwarded_client(None, [SPOOF], 0) == "unknown"


def test_fewer_entries_than_hops_falls_back_to_the_peer() -> None:
    # Reached the gateway past the load balancer (one entry where two were expected).
    assert forwarded_client(PEER, [SPOOF], 2) == PEER
    assert forwarded_client(PEER, [], 1) == PEER


def test_several_header_lines_are_one_list() -> None:
    assert forwarded_client(PEER, [SPOOF, f"{CLIENT}, {LB}"], 2) == CLIENT
    assert forwarded_client(PEER, [SPOOF, CLIENT], 1) == CLIENT


@pytest.mark.parametrize(
    ("entry", "address"),
    [("198.51.100.7:5123", CLIENT), ("[2001:db8::1]:443", "2001:db8::1"), ("2001:DB8::1", "2001:db8::1")],
)
def test_ports_and_brackets_are_removed(entry: str, address: str) -> None:
    assert forwarded_client(PEER, [f"{SPOOF}, {entry}"], 1) == address


def test_a_non_address_in_the_trusted_position_is_not_a_key() -> None:
    assert forwarded_client(PEER, ["evil.example.com"], 1) == PEER
    assert forwarded_client(PEER, ["1.2.3.4, unknown"], 1) == PEER


def test_trust_forwarded_for_counts_as_one_hop() -> None:
    assert effective_hops(0, True) == 1
    assert effective_hops(2, True) == 2
    assert effective_hops(0, False) == 0


# --- through the gateway: the per-IP request guard keys on the address ---------------------------
async def _statuses(client: TestClient, headers_list: list[dict[str, str]]) -> list[int]:
    out = []
    for headers in headers_list:
        resp = await client.get("/api/v1/jobs", headers=headers)
        out.append(resp.status)
    return out


@pytest.mark.parametrize("hops", [1, 2])
async def test_spoofed_headers_share_the_real_clients_limit(gateways: Gateways, hops: int) -> None:
    gw = await gateways.start(guard_ip_requests=3, trusted_proxy_hops=hops)
    # Five requests from one client, each claiming another address on the left.
    spoofed = [{"X-Forwarded-For": ", ".join([f"203.0.113.{i}", CLIENT, LB][: hops + 1])} for i in range(5)]
    assert await _statuses(gw, spoofed) == [401, 401, 401, 429, 429]
    # Another client behind the same proxies has a limit of its own.
    other = {"X-Forwarded-For": ", ".join(["198.51.100.8", LB][:hops])}
    assert await _statuses(gw, [other]) == [401]


async def test_without_trusted_hops_the_header_changes_nothing(gateways: Gateways) -> None:
    gw = await gateways.start(guard_ip_requests=3)
    spoofed = [{"X-Forwarded-For": f"203.0.113.{i}"} for i in range(5)]
    assert await _statuses(gw, spoofed) == [401, 401, 401, 429, 429]  # all the TCP peer's
