"""Which reverse proxies the web tier trusts to name the client: a value the settings hold.

Pure and free of any service (as `cache.limits`), so `cache.settings` can build it at
start-up; `cache.integrations.client_address` applies it. `TRUSTED_PROXIES` takes:

- nothing (the default): trust no proxy; the connecting peer is the client and every
  forwarding header is ignored;
- a hop count `N` (`1` behind one nginx): the N-th address from the right of the
  header is the client, as werkzeug's `ProxyFix(x_for=N)`;
- addresses and CIDRs (`10.0.0.0/8,192.168.1.1,::1`): walk the header from the right
  past every trusted address; the first untrusted one is the client, as uvicorn's
  `--forwarded-allow-ips`.

`TRUSTED_PROXY_HEADER` says which header the proxies write, `x-forwarded-for` (the
default) or `forwarded` (RFC 7239). Only that one is read: a proxy that sets one header
passes the other through from the client untouched, so reading both would let a client
write the chain.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from cache.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_HOPS = 32  # more proxies than this in front of one app is a misreading of the setting
_EXAMPLE = "1, or 10.0.0.0/8,192.168.1.1,::1"
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


class ForwardedHeader(StrEnum):
    X_FORWARDED_FOR = "x-forwarded-for"  # nginx, HAProxy, cloud load balancers
    FORWARDED = "forwarded"  # RFC 7239 `for=` parameters


@dataclass(frozen=True, kw_only=True)
class TrustedProxies:
    """Trusted proxies by address (`networks`) or by position (`hops`); neither: trust none.

    Raises:
        ValueError: both `networks` and `hops` given, or `hops` outside 0..MAX_HOPS.
    """

    networks: tuple[IPNetwork, ...] = ()
    hops: int = 0
    header: ForwardedHeader = ForwardedHeader.X_FORWARDED_FOR

    def __post_init__(self) -> None:
        if isinstance(self.hops, bool) or not isinstance(self.hops, int) or not 0 <= self.hops <= MAX_HOPS:
            raise ValueError(f"hops must be an int between 0 and {MAX_HOPS}, got {self.hops!r}")
        if self.hops and self.networks:
            raise ValueError("trust proxies by address (networks) or by position (hops), not both")
        object.__setattr__(self, "header", ForwardedHeader(self.header))
        object.__setattr__(self, "networks", tuple(_v4_network(n) for n in self.networks))

    @property
    def enabled(self) -> bool:
        """Whether any forwarding header is read at all."""
        return bool(self.hops or self.networks)

    def trusts(self, address: IPAddress) -> bool:
        """Whether `address` (IPv4-mapped IPv6 already unwrapped) is a trusted proxy's."""
        return any(address in network for network in self.networks)

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        header: ForwardedHeader | str = ForwardedHeader.X_FORWARDED_FOR,
        name: str = "TRUSTED_PROXIES",
    ) -> TrustedProxies:
        """`TrustedProxies` from the environment's text (see the module docstring).

        Raises:
            ConfigError: not empty, a hop count, or addresses/CIDRs; the message names `name`.
            ValueError: `header` is no `ForwardedHeader`.
        """
        chosen = ForwardedHeader(header)
        text = text.strip()
        if not text:
            return cls(header=chosen)
        if text.isascii() and text.isdigit():
            hops = int(text)
            if hops > MAX_HOPS:
                raise ConfigError(f"{name} must be a hop count between 0 and {MAX_HOPS}, got {text!r}")
            return cls(hops=hops, header=chosen)
        networks = []
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(_unbracketed(item), strict=True))
            except ValueError as exc:
                raise ConfigError(
                    f"{name} must be empty (trust no proxy), a hop count or comma-separated addresses "
                    f"and CIDRs (e.g. {_EXAMPLE}); item {item!r}: {exc}"
                ) from None
        return cls(networks=tuple(networks), header=chosen)


def _unbracketed(item: str) -> str:
    """`[::1]` and `[2001:db8::]/32` without the brackets a URL would need."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host + rest
    return item


def _v4_network(network: IPNetwork) -> IPNetwork:
    """`::ffff:10.0.0.0/104` as `10.0.0.0/8`: peers and hops are compared with mapped addresses unwrapped."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_V4_MAPPED):
        packed = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((packed, network.prefixlen - 96))
    return network
