"""Where a webhook may go: the server-side request forgery rules (docs/security.md).

A webhook URL is the one place where a user makes Montage open a connection to an address of the
user's choosing, from inside the deployment's network. The rules, checked at upload (400) and
again before every delivery attempt:

- ``https`` only, outside development (``ENVIRONMENT=development`` also allows ``http``);
- no user name or password in the URL, at most 2048 characters, a host name or an IP literal;
- every address the host resolves to must be a public unicast address: loopback, private
  (RFC 1918, IPv6 unique local), shared (CGNAT, 100.64/10), link-local, multicast, unspecified,
  reserved and documentation ranges are refused, and so are the cloud metadata addresses
  (169.254.169.254, fd00:ec2::254, 100.100.100.200) and IPv4 addresses smuggled in IPv6 forms
  (``::ffff:10.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``). One refused address refuses
  the whole name. In development loopback addresses are allowed (local receivers, the tests).

DNS rebinding: a name could resolve to a public address when checked and to a private one when
connected. So a delivery connects only to the addresses this module checked
(:class:`PinnedResolver`: aiohttp asks it instead of DNS, and it answers the checked addresses and
nothing else); TLS still verifies the certificate against the host name. Redirects are never
followed (a 3xx is a failed attempt), and no proxy from the environment is used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult

MAX_URL_LENGTH = 2048
DNS_TIMEOUT_SECONDS = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as text
Resolve = Callable[[str, int], Awaitable[list[str]]]

METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean …
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "168.63.129.16",  # Azure's wire server (a public range)
    )
)
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class UnsafeUrl(Exception):
    """A webhook URL the rules refuse (the message says why; it never holds a resolved address)."""


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    allow_http: bool = False
    allow_loopback: bool = False

    @classmethod
    def for_environment(cls, environment: str) -> UrlPolicy:
        dev = environment == "development"
        return cls(allow_http=dev, allow_loopback=dev)


@dataclass(frozen=True, slots=True)
class Destination:
    url: str
    host: str  # as in the URL (IDNA-encoded), without brackets
    port: int
    addresses: tuple[str, ...]  # checked: the only addresses a delivery may connect to


def _embedded_v4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4), else the address itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def address_refusal(ip: IPAddress, policy: UrlPolicy) -> str | None:
    """Why a delivery must not connect to ``ip`` (None: it may)."""
    if ip in METADATA:
        return "a cloud metadata address"
    inner = _embedded_v4(ip)
    if inner != ip:
        if inner in METADATA:
            return "a cloud metadata address"
        if ip.is_loopback or inner.is_loopback:
            return "a loopback address in an IPv6 form"
        ip = inner
    if ip.is_loopback:
        return None if policy.allow_loopback else "a loopback address"
    checks: tuple[tuple[bool, str], ...] = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_link_local, "a link-local address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT, "a shared (CGNAT) address"),
        (isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64_LOCAL, "a private address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    for refused, why in checks:
        if refused:
            return why
    return None


def parse(url: str, policy: UrlPolicy) -> tuple[str, int]:
    """The URL's host (IDNA-encoded, no brackets) and port; :class:`UnsafeUrl` when it breaks a rule
    that needs no DNS."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in url):
        raise UnsafeUrl("webhook_url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname
    except ValueError:
        raise UnsafeUrl("webhook_url is not a valid URL") from None
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in allowed:
        raise UnsafeUrl("webhook_url must be an https URL" if not policy.allow_http else "webhook_url must be http(s)")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("webhook_url must not contain a user name or password")
    if not host:
        raise UnsafeUrl("webhook_url has no host")
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise UnsafeUrl("webhook_url has an invalid host name") from None
    if port == 0:
        raise UnsafeUrl("webhook_url has an invalid port")
    return host, port or (443 if parts.scheme == "https" else 80)


async def system_resolve(host: str, port: int) -> list[str]:
    """The addresses DNS (the system resolver) gives for ``host``."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def check(url: str, policy: UrlPolicy, resolve: Resolve = system_resolve) -> Destination:
    """The destination of ``url`` with its checked addresses; :class:`UnsafeUrl` when refused."""
    host, port = parse(url, policy)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        names = [str(literal)]
    else:
        try:
            names = await asyncio.wait_for(resolve(host, port), DNS_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, UnicodeError):
            raise UnsafeUrl("webhook_url's host does not resolve") from None
        if not names:
            raise UnsafeUrl("webhook_url's host does not resolve")
    for name in names:
        try:
            ip = ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            raise UnsafeUrl("webhook_url's host resolves to something that is not an address") from None
        why = address_refusal(ip, policy)
        if why is not None:
            where = "is" if literal is not None else "resolves to"
            raise UnsafeUrl(f"webhook_url's host {where} {why}")
    return Destination(url=url, host=host, port=port, addresses=tuple(names))


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one delivery: the checked addresses of its host, and nothing else."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.destination.host:  # never: no redirects are followed
            raise OSError(f"no checked address for {host!r}")
        out: list[ResolveResult] = []
        for name in self.destination.addresses:
            ip = ipaddress.ip_address(name.split("%", 1)[0])
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            out.append(
                ResolveResult(hostname=host, host=str(ip), port=port, family=fam, proto=0, flags=socket.AI_NUMERICHOST)
            )
        if not out:
            raise OSError(f"no checked address for {host!r} in the asked family")
        return out

    async def close(self) -> None:
        return None
