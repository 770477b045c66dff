"""
A local smart-HTTP git server with a bearer-like password check: Twisted's CGI
support running `git http-backend`, behind a resource that demands HTTP Basic
auth with a given token as the password (as GitHub and GitLab do for tokens).

Plain HTTP on 127.0.0.1: it proves the token reaches the server only in the
Authorization header. (No TLS: the adapter sends the same header over HTTPS.)
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.twcgi import CGIScript

HTTP_BACKEND = "/usr/lib/git-core/git-http-backend"


class _Backend(CGIScript):
    def __init__(self, root: Path, reactor: Any) -> None:
        super().__init__(HTTP_BACKEND, reactor=reactor)
        self.root = root

    def runProcess(self, env: dict[str, str], request: Any, qargs: Any = ()) -> None:
        env = {**env, "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1"}
        super().runProcess(env, request, list(qargs))


class TokenGate(Resource):
    """Answers 401 unless the request carries Basic auth whose password is `token`."""

    isLeaf = True

    def __init__(self, root: Path, token: str, reactor: Any) -> None:
        super().__init__()
        self.token = token
        self.backend = _Backend(root, reactor)
        self.authorizations: list[bytes] = []
        self.uris: list[bytes] = []

    def render(self, request: Any) -> Any:
        header = request.getHeader(b"authorization") or b""
        self.authorizations.append(header)
        self.uris.append(request.uri)
        if not self._allowed(header):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="prevu-test"')
            return b"authentication required\n"
        # twcgi joins postpath as str for PATH_INFO (a Twisted bug with bytes segments).
        request.postpath = [segment.decode() for segment in request.postpath]
        self.backend.render(request)
        return NOT_DONE_YET

    def _allowed(self, header: bytes) -> bool:
        if not header.lower().startswith(b"basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:]).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        _, _, password = decoded.partition(":")
        return password == self.token


def serve_git(root: Path, token: str, reactor: Any) -> tuple[Any, TokenGate]:
    """Listen on a free 127.0.0.1 port; (listening port, gate). Stop with port.stopListening()."""
    gate = TokenGate(root, token, reactor)
    port = reactor.listenTCP(0, Site(gate), interface="127.0.0.1")
    return port, gate
