"""Where an app's webhook may go: an http(s) URL whose host resolves only to public addresses.

A URL that a user gives us must never be a way into our network. In production a webhook's host must
resolve to global unicast addresses only: loopback, private, link-local (the cloud metadata service at
169.254.169.254 among them), shared, reserved and multicast addresses are refused, as are IPv6 forms
that embed one (IPv4-mapped, NAT64, 6to4, Teredo). The check runs when a job is accepted and again
before every delivery, and the delivery connects to the address that was checked (the URL's host stays
in `Host` and in TLS's SNI), so a DNS answer that changes in between cannot redirect it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RefusedTarget(Exception):
    """The URL is not one a webhook may be delivered to; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    url: httpx.URL
    addresses: tuple[str, ...]  # the checked addresses, the only ones a delivery connects to

    @property
    def address(self) -> str:
        return self.addresses[0]

    def pinned(self, address: str) -> httpx.URL:
        return self.url.copy_with(host=address)

    @property
    def pinned_url(self) -> httpx.URL:
        return self.pinned(self.address)


def parse(url: str, *, require_https: bool) -> httpx.URL:
    """The URL, if its form is acceptable: http(s) (https when required), a host, no credentials."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise RefusedTarget(f"{url!r} is not a URL: {exc}") from exc
    schemes = ("https",) if require_https else ("https", "http")
    if parsed.scheme not in schemes:
        raise RefusedTarget(f"a webhook URL must start with {' or '.join(s + '://' for s in schemes)}")
    if not parsed.host:
        raise RefusedTarget("a webhook URL needs a host")
    if parsed.userinfo:
        raise RefusedTarget("a webhook URL must not carry credentials; verify the signature instead")
    return parsed


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, in the forms that reach one."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    inner = embedded_ipv4(ip)
    if inner is not None and not is_public(inner):
        return False
    return ip.is_global and not ip.is_multicast


async def _addresses(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise RefusedTarget(f"{host} does not resolve: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve(url: httpx.URL, *, allow_private: bool) -> Target:
    """The address to deliver to; RefusedTarget if any address of the host is not public (and must be)."""
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await _addresses(url.host, port)
    if not addresses:
        raise RefusedTarget(f"{url.host} has no address")
    if not allow_private:
        for address in addresses:
            if not is_public(ipaddress.ip_address(address)):
                raise RefusedTarget(f"{url.host} resolves to {address}, which is not a public address")
    return Target(url, tuple(addresses))
