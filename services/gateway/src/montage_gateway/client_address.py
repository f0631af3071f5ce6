"""The client's address: the one home of "who is calling" for per-IP limits and caps.

Behind proxies the TCP peer is the last proxy, not the client. Each proxy that *appends* to
``X-Forwarded-For`` (Envoy, Envoy Gateway, cloud load balancers, ingress-nginx with
``use-forwarded-headers``) adds the address it received the request from, so with ``hops``
trusted proxies in front of the gateway the last ``hops`` entries were written by them and the
client's address is the ``hops``-th entry from the right. Everything left of it is whatever the
client sent and is never read: a client cannot choose its own address.

- ``hops == 0``: no trusted proxy; the TCP peer is the client (``X-Forwarded-For`` ignored).
- fewer entries than ``hops``: the request did not pass every trusted proxy (or one is
  misconfigured); the TCP peer is used rather than a value nobody trusted wrote.
- an entry that is not an IP address (``unknown``, a hostname, garbage): likewise the TCP peer,
  so a limit key is always an address.

(``werkzeug.middleware.proxy_fix.ProxyFix(x_for=N)`` counts the same way.)
"""

from __future__ import annotations

import ipaddress

from aiohttp import web

UNKNOWN = "unknown"


def _address(entry: str) -> str | None:
    """The IP address in one ``X-Forwarded-For`` entry (port and IPv6 brackets removed), or None."""
    text = entry.strip().strip('"')
    if text.startswith("["):  # [2001:db8::1]:443
        text = text[1:].split("]", 1)[0]
    elif text.count(":") == 1:  # 203.0.113.7:5123
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def forwarded_client(peer: str | None, forwarded_for: list[str], hops: int) -> str:
    """The client's address from the TCP ``peer`` and every ``X-Forwarded-For`` header line."""
    fallback = peer or UNKNOWN
    if hops <= 0:
        return fallback
    # Several header lines are one list (RFC 9110 §5.3), in order.
    entries = [e for line in forwarded_for for e in line.split(",") if e.strip()]
    if len(entries) < hops:
        return fallback
    return _address(entries[-hops]) or fallback


def effective_hops(trusted_proxy_hops: int, trust_forwarded_for: bool) -> int:
    """``TRUSTED_PROXY_HOPS``; the deprecated ``TRUST_FORWARDED_FOR=true`` counts as one hop.

    With the one proxy it was meant for (ingress-nginx replacing the header) the only entry is
    both the first and the last, so reading one hop from the right keeps its behaviour while no
    longer trusting a client-sent first entry behind an appending proxy.
    """
    return max(trusted_proxy_hops, 1 if trust_forwarded_for else 0)


def client_address(request: web.Request, hops: int) -> str:
    """The calling client's address for ``request`` behind ``hops`` trusted proxies."""
    return forwarded_client(request.remote, request.headers.getall("X-Forwarded-For", []), hops)
