"""The address guard: downloads only reach the public internet, plus networks opened on purpose.

A URL's host name says nothing about where a connection goes, so the policy is applied to the
resolved address itself, at two points of aiohttp's connector:

- `GuardedResolver` drops refused answers from every DNS lookup, so a name with a mix of public
  and private answers only ever connects to the public ones, and a name with nothing but refused
  answers fails with one clear `BlockedAddressError`. The connector connects to exactly what the
  resolver returned, so DNS rebinding between "check" and "connect" cannot happen.
- `AddressPolicy.socket_factory` runs immediately before every `connect()`, including for IP
  literals (which aiohttp never sends to the resolver) and redirect targets.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 forms that carry an IPv4 destination: a dual-stack socket, a NAT64 gateway or a 6to4
# relay forwards to the embedded address, so that is the one to judge.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddressError(OSError):
    """A connection to an address the policy refuses; raised before any packet is sent."""


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if ip.version != 6:
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


def _refused_category(ip: IPAddress) -> str | None:
    # Most specific name first: 127.0.0.1 is also "private" and "not global".
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.is_reserved:  # before "private": Python counts 240.0.0.0/4 as both
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:  # e.g. 100.64.0.0/10 carrier-grade NAT, documentation ranges
        return "not globally routable"
    return None


class AddressPolicy:
    """Public addresses are allowed; private, loopback, link-local, multicast, reserved and
    unspecified ones are refused unless they fall in one of `allow_networks` (CIDR strings)."""

    def __init__(self, allow_networks: Iterable[str] = ()):
        self.allowed = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in allow_networks)

    def refusal(self, address: str) -> str | None:
        """Why `address` is refused (for messages), or None when connecting to it is fine."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return "not an IP address"
        target = _embedded_ipv4(ip) or ip
        if any(candidate in network for network in self.allowed for candidate in (ip, target)):
            return None
        category = _refused_category(target)
        return None if category is None else f"{category} address {address}"

    def socket_factory(self, addr_info: tuple[Any, ...]) -> socket.socket:
        """aiohttp `TCPConnector(socket_factory=...)`: the last check before `connect()`."""
        family, type_, proto, _canonname, sockaddr = addr_info
        why = self.refusal(sockaddr[0])
        if why is not None:
            raise BlockedAddressError(f"refused to connect to {why}")
        return socket.socket(family=family, type=type_, proto=proto)


class GuardedResolver(AbstractResolver):
    """Wraps aiohttp's default resolver and keeps only the answers the policy allows.

    Create it inside the event loop that will use it (aiohttp's resolvers bind to that loop).
    """

    def __init__(self, policy: AddressPolicy):
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._inner.resolve(host, port, family)
        allowed = [a for a in answers if self._policy.refusal(a["host"]) is None]
        if not allowed:
            refused = ", ".join(str(self._policy.refusal(a["host"])) for a in answers)
            raise BlockedAddressError(f"{host} resolves only to refused addresses: {refused}")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
