"""The request guard of ``datablame serve``: who may talk to the server, and how writes prove they come from its
own pages.

- **Host**: bound to a loopback address, only requests whose ``Host`` is a loopback name are served, so that a
  web page elsewhere cannot reach the server through DNS rebinding.
- **Access token** (required off loopback): every request carries it, in the ``token`` query parameter of the URL
  ``serve`` prints (answered with a redirect that moves it into an HttpOnly cookie) or in that cookie.
- **CSRF**: every write is a POST carrying the ``X-CSRF-Token`` header with the token the pages embed; a page on
  another origin can neither read it nor send the header without a CORS preflight, which is never answered.
- **Headers**: a Content-Security-Policy that runs no inline script and loads nothing from elsewhere, no sniffing,
  no framing, no referrer.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from urllib.parse import parse_qsl, urlencode

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.responses import PlainTextResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_COOKIE = "datablame_token"
CSRF_HEADER = "x-csrf-token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; script-src 'self'; "
                                 b"style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                                 b"form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _host_name(value: str) -> str:
    """The name in a ``Host`` header: ``[::1]:8765`` → ``::1``, ``localhost:8765`` → ``localhost``."""
    if value.startswith("["):
        return value[1:value.find("]")]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Guard:
    """ASGI middleware: checks the host, the access token (when ``token``) and the CSRF token of writes; adds the
    security headers to every response.

    allowed_hosts: the ``Host`` names served (without port); None serves any (a token guards the server then).
    """

    def __init__(self, app: ASGIApp, csrf: str, token: str | None = None, allowed_hosts: tuple[str, ...] | None = None):
        self.app, self.csrf, self.token, self.allowed_hosts = app, csrf, token, allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await self._with_headers(refusal)(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, scope: Scope):
        """The response that refuses this request, or None to serve it."""
        headers = Headers(scope=scope)
        host = _host_name(headers.get("host", ""))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return PlainTextResponse(f"host {host!r} is not served here: open the URL 'datablame serve' printed",
                                     status_code=421)
        if self.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            cookie = cookie_parser(headers.get("cookie", ""))  # lenient: a malformed cookie is no cookie
            if _same(query.get("token"), self.token):
                if scope["method"] == "GET":  # move the token from the URL into a cookie
                    rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
                    response = RedirectResponse(scope["path"] + (f"?{rest}" if rest else ""), status_code=303)
                    response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                    return response
            elif not _same(cookie.get(TOKEN_COOKIE), self.token):
                return PlainTextResponse("missing or wrong access token: open the URL with ?token=… that "
                                         "'datablame serve' printed", status_code=401)
        if scope["method"] not in ("GET", "HEAD") and not _same(headers.get(CSRF_HEADER), self.csrf):
            return PlainTextResponse("missing or wrong CSRF token: reload the page and try again", status_code=403)
        return None

    @staticmethod
    def _with_headers(response):
        response.raw_headers.extend(SECURITY_HEADERS)
        return response
