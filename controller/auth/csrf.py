"""Cross-site request forgery defences for cookie-authenticated requests.

A console session's CSRF token is an HMAC of the session cookie, so nothing new is stored
and a replica that can read the cookie can check the token: a cross-site page can make the
browser send the (HttpOnly, SameSite=Strict) cookie in some browsers and setups, but it
cannot read the cookie nor the page that carries the token. Unsafe requests must also come
from this origin (``Origin``/``Referer``, and ``Sec-Fetch-Site`` where the browser sends it).

Bearer-token requests are exempt: a browser never attaches an ``Authorization`` header by
itself, so there is nothing to forge.

Before login there is no session to derive from, so the login form uses a double-submit
token: a random pre-session cookie that the form must repeat (login CSRF would otherwise
log a victim into the attacker's account).
"""

import hashlib
import hmac
import secrets
from base64 import urlsafe_b64encode
from urllib.parse import urlparse

from starlette.requests import Request

from controller.auth.credentials import SESSION_COOKIE

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
LOGIN_CSRF_COOKIE = "ef_login_csrf"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_CONTEXT = b"edgefleet csrf v1"


class CsrfError(Exception):
    """The request may be forged; the text says what was missing or wrong."""


def token_for_session(session_token: str) -> str:
    """The CSRF token of a console session (derived, never stored)."""
    mac = hmac.new(session_token.encode("utf-8"), _CONTEXT, hashlib.sha256).digest()
    return urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def csrf_token_for(request: Request) -> str | None:
    """The token pages put in their forms and ``<meta name="csrf-token">``; None without a
    session cookie."""
    cookie = request.cookies.get(SESSION_COOKIE)
    return token_for_session(cookie) if cookie else None


def new_login_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; an absent value never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_of(url: str) -> tuple[str, str, int] | None:
    """The origin (scheme, host, port) of an absolute http(s) URL, with the scheme's default
    port filled in and the host lowercased; None for anything else (``null``, a relative or
    malformed URL, another scheme)."""
    try:
        parts = urlparse(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return scheme, parts.hostname.lower(), port if port is not None else _DEFAULT_PORTS[scheme]


def check_same_origin(request: Request) -> None:
    """Refuse a request a browser marks as cross-site, or whose Origin (else Referer) is not
    this controller's origin: scheme, host and port all compared (an ``http://`` page of
    the same host, e.g. a plaintext listener or an attacker on the path, is another
    origin); ``Origin: null`` passes only with ``Sec-Fetch-Site: same-origin``. Non-browser
    clients send none of these headers and pass; they are held by the
    token check instead."""
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site in ("cross-site", "same-site"):
        raise CsrfError("cross-site request refused")
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        origin = request.headers.get("referer") or origin
    if origin is None:
        return
    if origin == "null" and fetch_site == "same-origin":
        # Under Referrer-Policy: no-referrer (which every page of ours sends) browsers send
        # "Origin: null" and no Referer on their own pages' forms and fetch() POSTs; the
        # Sec-Fetch-Site they send then says same-origin, and no page can set that header.
        return
    own = origin_of(str(request.base_url))
    theirs = origin_of(origin)
    if theirs is None or theirs != own:
        raise CsrfError(
            "cross-site request refused (Origin is not this controller's origin:"
            " scheme, host and port must all match)"
        )


async def submitted_token(request: Request) -> str | None:
    """The token the request carries: the ``X-CSRF-Token`` header, else the form field.
    Only form bodies are parsed (and Starlette keeps the parsed form for the route); any
    other body, such as a streamed model upload, is never touched."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _FORM_TYPES:
        return None
    value = (await request.form()).get(CSRF_FIELD)
    return value if isinstance(value, str) else None


async def verify_session_request(request: Request) -> None:
    """Raise CsrfError unless an unsafe, cookie-authenticated request is same-origin and
    carries its session's token."""
    if request.method in SAFE_METHODS:
        return
    check_same_origin(request)
    if not tokens_match(csrf_token_for(request), await submitted_token(request)):
        raise CsrfError(
            f"missing or wrong CSRF token: send the page's token in the {CSRF_HEADER!r}"
            f" header or the {CSRF_FIELD!r} form field"
        )


__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_CSRF_COOKIE",
    "SAFE_METHODS",
    "CsrfError",
    "check_same_origin",
    "csrf_token_for",
    "new_login_token",
    "origin_of",
    "submitted_token",
    "token_for_session",
    "tokens_match",
    "verify_session_request",
]
