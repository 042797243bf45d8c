"""The IdP's JWKS, fetched with a total deadline (PyJWT's own timeout is per socket read).

A JWKS server that trickles one byte a second never trips a per-read timeout, so PyJWT's
`PyJWKClient` alone would hold a back-channel request (and its worker) for as long as the
server likes. `DeadlineJwksClient` keeps PyJWT's caching and key selection and replaces
only the fetch: the document is read in chunks against one monotonic deadline and a size cap.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from typing import Any

import jwt

DEFAULT_JWKS_TIMEOUT_S = 5.0
DEFAULT_JWKS_LIFESPAN_S = 300.0
MAX_JWKS_BYTES = 512 * 1024  # a key set is a few KiB; more is not a JWKS
_CHUNK_BYTES = 16 * 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is refused, as PyJWT does: the JWKS URL is configuration, not the server's choice."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class DeadlineJwksClient(jwt.PyJWKClient):
    """`PyJWKClient` whose fetch of the key set takes at most about `timeout` seconds in all."""

    def fetch_data(self) -> Any:
        """The JWKS document; raises PyJWKClientConnectionError when it is not complete in time."""
        deadline = time.monotonic() + self.timeout
        try:
            body = self._read(deadline)
            jwk_set = json.loads(body)
        except (OSError, ValueError) as exc:  # URLError, timeouts and HTTP errors are OSErrors
            raise jwt.PyJWKClientConnectionError(f"could not fetch the JWKS: {exc}") from None
        if not isinstance(jwk_set, dict):
            raise jwt.PyJWKClientError("the JWKS endpoint did not return a JSON object")
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(jwk_set)
        self._last_successful_fetch = time.monotonic()  # PyJWT >= 2.10: the refetch cooldown
        return jwk_set

    def _read(self, deadline: float) -> bytes:
        """The body, read in chunks; each read waits at most `timeout`, all of them until `deadline`."""
        request = urllib.request.Request(url=self.uri, headers=self.headers)  # noqa: S310 (http(s) only)
        handlers: list[Any] = [_NoRedirect()]
        if self.ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl_context))
        opener = urllib.request.build_opener(*handlers)
        chunks: list[bytes] = []
        size = 0
        with opener.open(request, timeout=self.timeout) as response:
            while chunk := response.read1(_CHUNK_BYTES):
                size += len(chunk)
                if size > MAX_JWKS_BYTES:
                    raise ValueError(f"the JWKS is over {MAX_JWKS_BYTES} bytes")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the JWKS was not received within {self.timeout} s")
        return b"".join(chunks)


def jwks_client(
    url: str, *, timeout_s: float = DEFAULT_JWKS_TIMEOUT_S, lifespan_s: float = DEFAULT_JWKS_LIFESPAN_S
) -> jwt.PyJWKClient:
    """A cached JWKS client for the IdP's `jwks_uri` (Keycloak: `<realm>/protocol/openid-connect/certs`).

    Build it once per process: the key set is kept `lifespan_s`, and an unknown `kid`
    (a rotated key) triggers one refetch. One fetch takes at most about `timeout_s` in all.

    Raises:
        ValueError: `url` is not an http(s) URL.
    """
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https"):
        raise ValueError(f"the JWKS URL must be http(s), got {url!r}")
    return DeadlineJwksClient(url, cache_jwk_set=True, lifespan=lifespan_s, timeout=timeout_s)
