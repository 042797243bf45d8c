"""Client identifiers turned into short, safe, collision-free parts of a key name.

A rate limit key embeds who is limited. Whatever a client sends (a spoofed header, a
megabyte of text, a newline, a `}` that would end the hash tag, a fresh IPv6 address
per request) must map to a bounded key, and two different clients must never share
one. So:

- IP addresses are parsed, not trusted as text: IPv4 as dotted quad, IPv4-mapped IPv6
  as the IPv4 it carries, and IPv6 grouped by its /64 (one subscriber usually owns a
  whole /64, so a per-address limit would give them 2^64 fresh quotas).
- Other identifiers stay readable when short and made of plain characters; anything
  else becomes `h:` plus 128 bits of SHA-256. A plain identifier never contains `:`,
  so it cannot collide with a hashed one.
- Secrets (API keys) are always hashed, so they never appear in key names, `SCAN`
  output or `MONITOR`.

Pure functions, no Redis.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from enum import StrEnum

from cache.errors import KryonixError

MAX_PLAIN_LENGTH = 64  # longer identifiers are hashed: a key name stays under ~100 bytes
HASH_HEX_CHARS = 32  # 128 bits of SHA-256: no accidental collision among any realistic number of clients
IPV6_PREFIX = 64  # the smallest block an ISP hands to a subscriber (RFC 6177)
HASH_PREFIX = "h:"

# Characters a plain identifier may keep: no ':' (reserved for the hash prefix and IP
# groups), no braces (hash tags), no glob characters (operators SCAN by pattern),
# no whitespace or control characters.
_PLAIN = re.compile(r"[A-Za-z0-9._@+-]+")


class InvalidIdentifier(KryonixError, ValueError):
    """An identifier cannot be used to key a rate limit; the message says why."""


class IdentifierKind(StrEnum):
    IP = "ip"  # a client address: parsed, IPv6 grouped by /64
    OPAQUE = "opaque"  # a user id, tenant, route: kept readable when short and plain, else hashed
    SECRET = "secret"  # noqa: S105 (a kind, not a password): an API key or token, always hashed


def hash_identifier(value: str) -> str:
    """`h:` plus 128 bits of SHA-256 of `value` (UTF-8; lone surrogates kept, not replaced).

    `surrogatepass` keeps the mapping injective: replacing unencodable characters would
    make two different strings hash alike.
    """
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return HASH_PREFIX + digest[:HASH_HEX_CHARS]


def normalize_opaque(value: object) -> str:
    """A user id or similar as it goes into a key name.

    Args:
        value: a non-empty string, or an int (user ids often are).

    Returns:
        `value` unchanged when it is at most MAX_PLAIN_LENGTH plain characters
        (letters, digits, `._@+-`), otherwise its hash. No case folding or Unicode
        normalisation: `Bob` and `bob` stay two clients.

    Raises:
        InvalidIdentifier: not a string or int, or empty.
    """
    text = _text(value)
    if len(text) <= MAX_PLAIN_LENGTH and _PLAIN.fullmatch(text):
        return text
    return hash_identifier(text)


def normalize_secret(value: object) -> str:
    """An API key or token as it goes into a key name: always its hash.

    Raises:
        InvalidIdentifier: not a string or int, or empty.
    """
    return hash_identifier(_text(value))


def normalize_ip(value: object, *, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """A client address as it goes into a key name.

    Accepts what proxies put in headers: surrounding whitespace, `[v6]` brackets and
    `%zone` suffixes. IPv4 stays as is (`203.0.113.7`), IPv4-mapped IPv6
    (`::ffff:203.0.113.7`) becomes that IPv4, other IPv6 becomes its network
    (`2001:db8:1:2::/64`), so every address of one /64 shares one limit.

    Args:
        value: a string or an `ipaddress` address object.
        ipv6_prefix: how many leading bits group IPv6 clients (1..128).

    Raises:
        InvalidIdentifier: not an IP address (with a port, a host name, garbage).
    """
    if not 1 <= ipv6_prefix <= 128:
        raise InvalidIdentifier(f"ipv6_prefix must be between 1 and 128, got {ipv6_prefix!r}")
    address = _parse_ip(value)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    network = ipaddress.IPv6Network((int(address), ipv6_prefix), strict=False)
    return str(network)


def normalize(value: object, kind: IdentifierKind) -> str:
    """Normalise `value` as an identifier of `kind` (see the module docstring)."""
    if kind is IdentifierKind.IP:
        return normalize_ip(value)
    if kind is IdentifierKind.SECRET:
        return normalize_secret(value)
    return normalize_opaque(value)


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidIdentifier(f"an identifier must be a string or an int, got {type(value).__name__}")
    text = str(value)
    if not text:
        raise InvalidIdentifier("an identifier must not be empty")
    return text


_MAX_IP_TEXT = 64  # the longest address with a zone; anything longer is not an IP


def _parse_ip(value: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        address = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_IP_TEXT:
            raise InvalidIdentifier(f"not an IP address: {len(text)} characters is too long for one")
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        if ":" in text:
            text = text.partition("%")[0]  # an IPv6 zone names our interface, not the client
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidIdentifier(f"not an IP address: {value[:_MAX_IP_TEXT]!r}") from None
    else:
        raise InvalidIdentifier(f"an IP address must be a string, got {type(value).__name__}")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        address = ipaddress.IPv6Address(int(address))
    return address
