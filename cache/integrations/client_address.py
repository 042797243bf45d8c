"""The client's IP address behind reverse proxies, from `X-Forwarded-For` or `Forwarded`.

Framework-neutral and pure: an adapter passes the connecting peer's address, the raw
header values and the `TrustedProxies` from the settings (see `cache.proxies`), and
gets the address to rate-limit by. The rules are those of werkzeug's `ProxyFix` and
uvicorn's `--forwarded-allow-ips`:

- trust no proxy (the default): the peer is the client, every header is ignored;
- by address: an untrusted peer is the client; otherwise walk the header from the
  right past trusted addresses, the first untrusted one is the client, and when every
  entry is trusted the leftmost one is;
- by hop count N: the N-th entry from the right, when the header has at least N
  entries; otherwise the peer.

Only entries written by trusted proxies are ever read, so whatever a client puts in
the header can only name itself. An entry that is no usable address (`unknown`, an
obfuscated `_hidden`, garbage, a `Forwarded` element without `for=` or with two) stands
for a client the trusted proxy that wrote it could not name: the answer is then the
nearest usable address to its right, that proxy's (or the peer). Nothing here raises on
what a client sends: a result is a valid IP address string or None (the peer is no IP
address and the headers name no one, e.g. a Unix socket with trust by address).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from cache.proxies import MAX_HOPS, ForwardedHeader, IPAddress, TrustedProxies

__all__ = ["ForwardedHeader", "TrustedProxies", "client_ip", "normalize_peer"]

MAX_ENTRIES = 2 * MAX_HOPS  # the rightmost entries read; those further left were written by the client
MAX_ELEMENT_CHARS = 512  # one hop's entry; longer is garbage, not parsed
_MAX_NODE_CHARS = 64  # `[v6%zone]:port` fits; a longer node is not an address
_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")  # RFC 7239 node-port: digits or obfuscated
_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# A lenient unquoted value (`for=1.2.3.4:80` should be quoted, proxies often do not).
_PAIR = re.compile(rf'\s*({_TCHARS})\s*=\s*("(?:[^"\\]|\\.)*"|[^;,"\s]+)\s*')
_ESCAPE = re.compile(r"\\(.)")

HeaderValue = str | Sequence[str] | None


def client_ip(
    peer: str | None,
    *,
    forwarded_for: HeaderValue = None,
    forwarded: HeaderValue = None,
    trusted: TrustedProxies,
) -> str | None:
    """The client's address under `trusted` (see the module docstring for the rules).

    Args:
        peer: the connecting address (`REMOTE_ADDR`, ASGI `client[0]`); `ip:port` and
            `[v6]:port` are accepted.
        forwarded_for: `X-Forwarded-For`, one value or every header line in order.
        forwarded: `Forwarded` (RFC 7239), likewise. Only the header `trusted.header`
            names is read.
        trusted: the trusted proxies, usually `get_settings().trusted_proxies`.

    Returns:
        A normalised IP address (IPv4-mapped IPv6 as IPv4, no port, brackets or zone),
        which `normalize_ip` and `RateLimiter.limit_by_ip` accept; None when neither the
        peer nor a trusted entry is an address.
    """
    direct = _node(peer)
    if not trusted.enabled or (trusted.networks and (direct is None or not trusted.trusts(direct))):
        return _text(direct)
    if trusted.header is ForwardedHeader.FORWARDED:
        hops = [_node(_forwarded_for(element)) for element in _entries(forwarded)]
    else:
        hops = [_node(entry) for entry in _entries(forwarded_for)]
    if trusted.hops:
        return _text(_by_count(direct, hops, trusted.hops))
    return _text(_by_address(direct, hops, trusted))


def normalize_peer(peer: str | None) -> str | None:
    """A raw peer address (`1.2.3.4:5678`, `[2001:db8::1]:443`, `::ffff:1.2.3.4`) as a bare IP.

    Returns None for anything that is no IP address (a Unix socket path, `unknown`, garbage).
    """
    return _text(_node(peer))


def _by_count(direct: IPAddress | None, hops: list[IPAddress | None], count: int) -> IPAddress | None:
    """The `count`-th entry from the right, or the nearest usable one right of it, or the peer."""
    if len(hops) < count:
        return direct
    for address in hops[len(hops) - count :]:
        if address is not None:
            return address
    return direct


def _by_address(
    direct: IPAddress | None, hops: list[IPAddress | None], trusted: TrustedProxies
) -> IPAddress | None:
    """The first untrusted entry from the right; the nearest trusted one before an unusable entry."""
    nearest = direct
    for address in reversed(hops):
        if address is None:
            return nearest
        if not trusted.trusts(address):
            return address
        nearest = address
    return nearest  # every entry trusted: the leftmost, an internal caller going through the proxies


def _entries(value: HeaderValue) -> list[str]:
    """The rightmost MAX_ENTRIES comma-separated entries of all header lines, left to right.

    Commas split even inside quotes: a trusted proxy's own entry never holds one, and a
    client's unbalanced quote must not swallow the entries appended after it.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, Sequence):
        text = ",".join(line for line in value if isinstance(line, str))
    else:
        return []
    if not text.strip():
        return []
    return text.rsplit(",", MAX_ENTRIES)[-MAX_ENTRIES:]


def _forwarded_for(element: str) -> str | None:
    """The `for=` value of one `Forwarded` element, unquoted; None when it has none, two or bad syntax."""
    if len(element) > MAX_ELEMENT_CHARS:
        return None
    found: str | None = None
    position = 0
    while position < len(element) and element[position:].strip():
        match = _PAIR.match(element, position)
        if match is None:
            return None
        if match[1].lower() == "for":
            if found is not None:
                return None  # two clients named in one hop: believe neither
            found = match[2]
        position = match.end()
        if position < len(element):
            if element[position] != ";":
                return None
            position += 1
    if found is not None and found.startswith('"'):
        found = _ESCAPE.sub(r"\1", found[1:-1])
    return found


def _node(text: object) -> IPAddress | None:
    """An address from `ip`, `ip:port`, `[v6]`, `[v6]:port`; None for anything else."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or len(text) > _MAX_NODE_CHARS:
        return None
    port = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or ":" not in host or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else ""
        if rest and not port:
            return None
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if "." not in host:
            return None
    else:
        host = text
    if port and (not _PORT.fullmatch(port) or (port.isdigit() and int(port) > 65535)):
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))  # a zone names our interface, not the client
    return address


def _text(address: IPAddress | None) -> str | None:
    return None if address is None else str(address)
