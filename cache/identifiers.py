"""Client identifiers turned into short, safe, collision-free parts of a key name.

A rate limit key embeds who is limited. Whatever a client sends (a spoofed header, a
megabyte of text, a newline, a `}` that would end the hash tag, a fresh IPv6 address
per request) must map to a bounded key, and two different clients must never share
one. So:

- IP addresses are parsed, not trusted as text: IPv4 as dotted quad; an IPv6 address
  that carries an IPv4 one (IPv4-mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4
  `2002::/16`, Teredo `2001::/32`) as that IPv4, so a NAT64 gateway's clients are
  told apart and a 6to4 owner gets one limit, not 65,536; native IPv6 grouped by a
  prefix (`RATELIMIT_IPV6_PREFIX`, default /56: one subscriber owns a whole block, so a
  per-address or per-/64 limit would hand them 2^64 or 256 fresh quotas).
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
IPV6_PREFIX = 56  # RIPE-690's residential assignment; RATELIMIT_IPV6_PREFIX overrides (docs/ratelimit.md)
MIN_IPV6_PREFIX = 16  # a shorter prefix would put whole ISPs behind one limit
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix, IPv4 in the last 32 bits
HASH_PREFIX = "h:"

# Characters a plain identifier may keep: no ':' (reserved for the hash prefix and IP
# groups), no braces (hash tags), no glob characters (operators SCAN by pattern),
# no whitespace or control characters.
_PLAIN = re.compile(r"[A-Za-z0-9._@+-]+")


class InvalidIdentifier(KryonixError, ValueError):
    """An identifier cannot be used to key a rate limit; the message says why."""


class IdentifierKind(StrEnum):
    IP = "ip"  # a client address: parsed, embedded IPv4 extracted, IPv6 grouped by prefix
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
    text = _identifier_text(value)
    if len(text) <= MAX_PLAIN_LENGTH and _PLAIN.fullmatch(text):
        return text
    return hash_identifier(text)


def normalize_secret(value: object) -> str:
    """An API key or token as it goes into a key name: always its hash.

    Raises:
        InvalidIdentifier: not a string or int, or empty.
    """
    return hash_identifier(_identifier_text(value))


def normalize_ip(value: object, *, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """A client address as it goes into a key name.

    Accepts what proxies put in headers: surrounding whitespace, `[v6]` brackets and
    `%zone` suffixes. IPv4 stays as is (`203.0.113.7`); IPv6 that carries an IPv4
    address (`::ffff:203.0.113.7`, `64:ff9b::cb00:7107`, `2002:cb00:7107::1`, Teredo)
    becomes that IPv4; other IPv6 becomes its network (`2001:db8:1:200::/56`), so
    every address of one block shares one limit.

    Args:
        value: a string or an `ipaddress` address object.
        ipv6_prefix: how many leading bits group native IPv6 clients (16..128).

    Raises:
        InvalidIdentifier: not an IP address (with a port, a host name, garbage).
    """
    if (
        isinstance(ipv6_prefix, bool)
        or not isinstance(ipv6_prefix, int)
        or not MIN_IPV6_PREFIX <= ipv6_prefix <= 128
    ):
        raise InvalidIdentifier(
            f"ipv6_prefix must be an int between {MIN_IPV6_PREFIX} and 128, got {ipv6_prefix!r}"
        )
    address = _parse_ip(value)
    if isinstance(address, ipaddress.IPv6Address):
        embedded = embedded_ipv4(address)
        if embedded is None:
            return str(ipaddress.IPv6Network((int(address), ipv6_prefix), strict=False))
        address = embedded
    return str(address)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, when it is a transition address; else None.

    The IPv4 is the client's (or its NAT's) public address: it, not the shared gateway
    prefix, says who is asking.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # (server, client): the client's NAT address, de-obfuscated
    return None


def normalize(value: object, kind: IdentifierKind, *, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """Normalise `value` as an identifier of `kind` (see the module docstring)."""
    if kind is IdentifierKind.IP:
        return normalize_ip(value, ipv6_prefix=ipv6_prefix)
    if kind is IdentifierKind.SECRET:
        return normalize_secret(value)
    return normalize_opaque(value)


def _identifier_text(value: object) -> str:
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
