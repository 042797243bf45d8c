"""The client address behind proxies: only trusted hops name the client, nothing raises."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cache.errors import ConfigError
from cache.identifiers import normalize_ip
from cache.integrations.client_address import MAX_ENTRIES, client_ip, normalize_peer
from cache.proxies import ForwardedHeader, TrustedProxies
from cache.settings import Settings

pytestmark = [pytest.mark.ratelimit, pytest.mark.security]

NONE = TrustedProxies()
NETS = TrustedProxies.parse("10.0.0.0/8,192.168.1.1,::1")
ONE = TrustedProxies.parse("1")
TWO = TrustedProxies.parse("2")
NETS_FWD = TrustedProxies.parse("10.0.0.0/8,::1", header="forwarded")
TWO_FWD = TrustedProxies.parse("2", header="forwarded")


@pytest.mark.parametrize(
    ("peer", "header", "trusted", "expected"),
    [
        # trust no proxy: the header is never read
        ("203.0.113.7", "6.6.6.6", NONE, "203.0.113.7"),
        ("203.0.113.7:5678", None, NONE, "203.0.113.7"),
        (None, "6.6.6.6", NONE, None),
        # by address: an untrusted peer is the client whatever it sends
        ("203.0.113.7", "10.0.0.1", NETS, "203.0.113.7"),
        ("203.0.113.7", "6.6.6.6, 10.0.0.1", NETS, "203.0.113.7"),
        # a trusted peer: walk from the right past trusted hops
        ("10.0.0.1", "198.51.100.9", NETS, "198.51.100.9"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.9", NETS, "198.51.100.9"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.9, 10.0.0.2, 192.168.1.1", NETS, "198.51.100.9"),
        ("10.0.0.1", "6.6.6.6, 10.2.0.1", NETS, "6.6.6.6"),
        ("10.0.0.1", "10.9.0.1, 10.2.0.1", NETS, "10.9.0.1"),  # all trusted: the leftmost
        ("10.0.0.1", None, NETS, "10.0.0.1"),  # no header: the proxy itself calls
        ("10.0.0.1", "   ", NETS, "10.0.0.1"),
        ("192.168.1.2", "6.6.6.6", NETS, "192.168.1.2"),  # a single address is not its network
        ("[::1]:8000", "2001:db8::7", NETS, "2001:db8::7"),
        ("::ffff:10.0.0.1", "198.51.100.9", NETS, "198.51.100.9"),  # mapped peer unwrapped
        ("10.0.0.1", "::ffff:198.51.100.9", NETS, "198.51.100.9"),
        ("10.0.0.1", "::ffff:10.0.0.2, 198.51.100.9", NETS, "198.51.100.9"),
        # ports and brackets in entries
        ("10.0.0.1", "198.51.100.9:4711", NETS, "198.51.100.9"),
        ("10.0.0.1", "[2001:db8:cafe::17]:4711", NETS, "2001:db8:cafe::17"),
        ("10.0.0.1", "[2001:db8:cafe::17]", NETS, "2001:db8:cafe::17"),
        ("10.0.0.1", "2001:DB8:CAFE::17", NETS, "2001:db8:cafe::17"),
        ("10.0.0.1", "fe80::1%eth0", NETS, "fe80::1"),
        # unusable entries: the nearest usable address right of them
        ("10.0.0.1", "unknown", NETS, "10.0.0.1"),
        ("10.0.0.1", "6.6.6.6, unknown, 10.0.0.2", NETS, "10.0.0.2"),
        ("10.0.0.1", "1.2.3.4, evil", NETS, "10.0.0.1"),
        ("10.0.0.1", "evil, 198.51.100.9", NETS, "198.51.100.9"),
        ("10.0.0.1", "198.51.100.9:99999", NETS, "10.0.0.1"),
        ("10.0.0.1", "[1.2.3.4]:80", NETS, "10.0.0.1"),
        ("10.0.0.1", "[2001:db8::1", NETS, "10.0.0.1"),
        ("10.0.0.1", "[2001:db8::1]80", NETS, "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4\r\nX-Admin: 1", NETS, "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4\x00", NETS, "10.0.0.1"),
        ("10.0.0.1", "\uff11.\uff12.\uff13.\uff14", NETS, "10.0.0.1"),
        ("10.0.0.1", "6.6.6.6,,", NETS, "10.0.0.1"),
        ("10.0.0.1", "x" * 100_000 + ", 198.51.100.9", NETS, "198.51.100.9"),
        # hop count: the N-th from the right when there are at least N entries
        ("10.0.0.1", "198.51.100.9", ONE, "198.51.100.9"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.9", ONE, "198.51.100.9"),
        ("10.0.0.1", "6.6.6.6, 198.51.100.9, 10.0.0.2", TWO, "198.51.100.9"),
        ("10.0.0.1", "198.51.100.9", TWO, "10.0.0.1"),  # shorter than the count: the peer
        ("10.0.0.1", None, ONE, "10.0.0.1"),
        ("10.0.0.1", "unknown, 10.0.0.2", TWO, "10.0.0.2"),
        ("10.0.0.1", "unknown, garbage", TWO, "10.0.0.1"),
        ("/run/app.sock", "198.51.100.9", ONE, "198.51.100.9"),  # a Unix socket peer
        ("/run/app.sock", "198.51.100.9", NETS, None),  # cannot be trusted by address
        ("/run/app.sock", None, ONE, None),
    ],
)
def test_x_forwarded_for(
    peer: str | None, header: str | None, trusted: TrustedProxies, expected: str
) -> None:
    assert client_ip(peer, forwarded_for=header, forwarded="for=6.6.6.6", trusted=trusted) == expected


@pytest.mark.parametrize(
    ("header", "trusted", "expected"),
    [
        ("for=198.51.100.9", NETS_FWD, "198.51.100.9"),
        ('for="198.51.100.9:4711";proto=https;by=10.0.0.1', NETS_FWD, "198.51.100.9"),
        ('For="[2001:db8:cafe::17]:4711"', NETS_FWD, "2001:db8:cafe::17"),
        ("for=198.51.100.9:4711", NETS_FWD, "198.51.100.9"),  # unquoted port, as some proxies write it
        ('for="[2001:db8::1]:_port"', NETS_FWD, "2001:db8::1"),  # obfuscated port
        ("for=6.6.6.6, for=198.51.100.9; proto=http", NETS_FWD, "198.51.100.9"),
        ("for=6.6.6.6, for=198.51.100.9, for=10.0.0.2", NETS_FWD, "198.51.100.9"),
        ('for="\\1\\9\\8.51.100.9"', NETS_FWD, "198.51.100.9"),  # quoted-pair escapes
        ("for=unknown", NETS_FWD, "10.0.0.1"),
        ("for=_hidden, for=10.0.0.2", NETS_FWD, "10.0.0.2"),
        ("proto=https", NETS_FWD, "10.0.0.1"),  # a hop that names no client
        ("for=6.6.6.6;for=5.5.5.5", NETS_FWD, "10.0.0.1"),  # two clients in one hop
        ('for="1.2.3.4;proto=http"', NETS_FWD, "10.0.0.1"),
        ('for="1.2.3.4, for=6.6.6.6"', NETS_FWD, "10.0.0.1"),
        ('for="6.6.6.6, for=198.51.100.9', NETS_FWD, "198.51.100.9"),  # an open quote swallows nothing
        ("for=1.2.3.4 junk", NETS_FWD, "10.0.0.1"),
        ("for=", NETS_FWD, "10.0.0.1"),
        ('for=""', NETS_FWD, "10.0.0.1"),
        ("for=6.6.6.6, for=198.51.100.9, for=10.0.0.2", TWO_FWD, "198.51.100.9"),
        ("for=198.51.100.9", TWO_FWD, "10.0.0.1"),
    ],
)
def test_forwarded(header: str, trusted: TrustedProxies, expected: str) -> None:
    assert client_ip("10.0.0.1", forwarded=header, forwarded_for="6.6.6.6", trusted=trusted) == expected


def test_several_header_lines_are_one_list_in_order() -> None:
    lines = ["6.6.6.6, 198.51.100.9", "10.0.0.2"]
    assert client_ip("10.0.0.1", forwarded_for=lines, trusted=NETS) == "198.51.100.9"
    assert client_ip("10.0.0.1", forwarded=["for=6.6.6.6", "for=10.0.0.2"], trusted=NETS_FWD) == "6.6.6.6"


def test_only_the_rightmost_entries_are_read() -> None:
    long = ", ".join(["10.0.0.9"] * (MAX_ENTRIES + 10) + ["10.0.0.2"])
    assert client_ip("10.0.0.1", forwarded_for="6.6.6.6, " + long, trusted=NETS) == "10.0.0.9"


def test_the_result_is_a_rate_limit_identifier() -> None:
    assert normalize_ip(client_ip("10.0.0.1", forwarded_for="[2001:db8::1]:443", trusted=NETS)) == (
        "2001:db8::/56"
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.7:5678", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("[::ffff:203.0.113.7]:80", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("", None),
        (None, None),
        ("unknown", None),
        ("localhost:80", None),
        ("/run/app.sock", None),
        ("203.0.113.7:http", None),
    ],
)
def test_normalize_peer(raw: str | None, expected: str | None) -> None:
    assert normalize_peer(raw) == expected


_NETWORKS = st.sampled_from([NETS, NETS_FWD, NONE])
_ADDRESSES = st.ip_addresses().map(str)
_HEADER_PIECES = st.sampled_from(
    ["for=", '"', "[", "]", ":", ",", ";", " ", "unknown", "_x", "10.0.0.2", "::1", "6.6.6.6", "\\"]
)
_HEADERS = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(_HEADER_PIECES, _ADDRESSES), max_size=30).map("".join),
    st.lists(st.text(max_size=40), max_size=4),
)


@given(peer=_ADDRESSES, header=_HEADERS, other=_HEADERS, trusted=_NETWORKS)
def test_an_untrusted_peer_is_the_client_whatever_it_sends(
    peer: str, header: str | list[str], other: str | list[str], trusted: TrustedProxies
) -> None:
    if trusted.networks and trusted.trusts(ipaddress.ip_address(normalize_peer(peer) or "")):
        return
    assert client_ip(peer, forwarded_for=header, forwarded=other, trusted=trusted) == normalize_peer(peer)


@given(
    peer=st.one_of(st.none(), st.text(max_size=40), _ADDRESSES),
    header=_HEADERS,
    other=_HEADERS,
    trusted=st.sampled_from([NETS, NETS_FWD, NONE, ONE, TWO, TWO_FWD]),
)
def test_never_raises_and_returns_an_address_or_none(
    peer: str | None, header: str | list[str], other: str | list[str], trusted: TrustedProxies
) -> None:
    result = client_ip(peer, forwarded_for=header, forwarded=other, trusted=trusted)
    if result is not None:
        assert str(ipaddress.ip_address(result)) == result
        normalize_ip(result)


def test_a_hop_count_reads_the_entries_the_proxies_wrote() -> None:
    """Whatever a client prepends, with N proxies the N-th entry from the right is what the outermost saw."""
    for prefix in ("", "6.6.6.6", "for=1.1.1.1, 2.2.2.2", "garbage, , ,"):
        header = f"{prefix}, 198.51.100.9, 10.0.0.2" if prefix else "198.51.100.9, 10.0.0.2"
        assert client_ip("10.0.0.1", forwarded_for=header, trusted=TWO) == "198.51.100.9"


# --- the setting ---


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, TrustedProxies()),
        ({"TRUSTED_PROXIES": " "}, TrustedProxies()),
        ({"TRUSTED_PROXIES": "0"}, TrustedProxies()),
        ({"TRUSTED_PROXIES": "3"}, TrustedProxies(hops=3)),
        (
            {"TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1,::1,"},
            TrustedProxies(
                networks=(
                    ipaddress.ip_network("10.0.0.0/8"),
                    ipaddress.ip_network("192.168.1.1/32"),
                    ipaddress.ip_network("::1/128"),
                )
            ),
        ),
        (
            {"TRUSTED_PROXIES": "::ffff:10.0.0.0/104,[2001:db8::]/32"},
            TrustedProxies(
                networks=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"))
            ),
        ),
        (
            {"TRUSTED_PROXIES": "1", "TRUSTED_PROXY_HEADER": "forwarded"},
            TrustedProxies(hops=1, header=ForwardedHeader.FORWARDED),
        ),
    ],
)
def test_trusted_proxies_from_the_environment(env: dict[str, str], expected: TrustedProxies) -> None:
    assert Settings.from_env(env).trusted_proxies == expected


@pytest.mark.parametrize(
    ("env", "named", "expected"),
    [
        ({"TRUSTED_PROXIES": "10.0.0.1/8"}, "TRUSTED_PROXIES", "has host bits set"),
        ({"TRUSTED_PROXIES": "proxy.internal"}, "TRUSTED_PROXIES", "10.0.0.0/8,192.168.1.1,::1"),
        ({"TRUSTED_PROXIES": "*"}, "TRUSTED_PROXIES", "a hop count"),
        ({"TRUSTED_PROXIES": "-1"}, "TRUSTED_PROXIES", "a hop count"),
        ({"TRUSTED_PROXIES": "1,10.0.0.1"}, "TRUSTED_PROXIES", "item '1'"),
        ({"TRUSTED_PROXIES": "33"}, "TRUSTED_PROXIES", "between 0 and 32"),
        ({"TRUSTED_PROXIES": "\uff13"}, "TRUSTED_PROXIES", "a hop count"),
        ({"TRUSTED_PROXY_HEADER": "x-real-ip"}, "TRUSTED_PROXY_HEADER", "'x-forwarded-for' or 'forwarded'"),
    ],
)
def test_bad_trusted_proxies_name_the_variable(env: dict[str, str], named: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert named in str(info.value)
    assert expected in str(info.value)


def test_a_trusted_proxies_value_is_one_kind_of_trust() -> None:
    with pytest.raises(ValueError, match="not both"):
        TrustedProxies(hops=1, networks=(ipaddress.ip_network("10.0.0.0/8"),))
    with pytest.raises(ValueError, match="between 0 and 32"):
        TrustedProxies(hops=-1)
    assert not TrustedProxies().enabled
    assert TrustedProxies(hops=1).enabled


# --- agreement with the proxies' own middleware on well-formed chains ---

_POOL = ["10.0.0.2", "10.255.0.9", "192.168.1.1", "::1", "198.51.100.9", "2001:db8::7", "6.6.6.6"]
_CHAIN_ADDRESSES = st.one_of(
    st.sampled_from(_POOL),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None and a.scope_id is None).map(str),
)


def _with_port(address: str, port: int | None) -> str:
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


_ENTRIES = st.lists(
    st.tuples(_CHAIN_ADDRESSES, st.one_of(st.none(), st.integers(1, 65535))).map(lambda e: _with_port(*e)),
    max_size=8,
)


@given(peer=st.sampled_from(["10.0.0.1", "::1", "192.168.1.1"]), entries=_ENTRIES)
def test_trust_by_address_agrees_with_uvicorn(peer: str, entries: list[str]) -> None:
    from uvicorn.middleware.proxy_headers import _TrustedHosts

    header = ", ".join(entries)
    ours = client_ip(peer, forwarded_for=header, trusted=NETS)
    if not entries:
        assert ours == peer
        return
    host, _ = _TrustedHosts("10.0.0.0/8,192.168.1.1,::1").get_trusted_client_address(header)
    assert ours == normalize_peer(host)


@given(peer=st.sampled_from(["10.0.0.1", "203.0.113.5"]), entries=_ENTRIES, hops=st.integers(1, 4))
def test_a_hop_count_agrees_with_werkzeug_proxy_fix(peer: str, entries: list[str], hops: int) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    seen: list[str] = []

    def app(environ: dict[str, str], start_response: object) -> list[bytes]:
        seen.append(environ["REMOTE_ADDR"])
        return []

    environ = {"REMOTE_ADDR": peer, "REQUEST_METHOD": "GET", "wsgi.url_scheme": "http"}
    if entries:
        environ["HTTP_X_FORWARDED_FOR"] = ", ".join(entries)
    ProxyFix(app, x_for=hops)(environ, lambda *_: None)  # type: ignore[arg-type]
    ours = client_ip(
        peer, forwarded_for=environ.get("HTTP_X_FORWARDED_FOR"), trusted=TrustedProxies(hops=hops)
    )
    assert ours == normalize_peer(seen[0])
