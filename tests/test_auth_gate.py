"""The proxy's AccessGate: sessions, handoffs, share links, bypass, refusals."""

from __future__ import annotations

from twisted.internet.task import Clock

from prevu.auth.authority import Authority
from prevu.auth.gate import AuthGate
from prevu.auth.rules import AuthSettings
from prevu.auth.tokens import (
    Share,
    Signer,
    bypass_token,
    encode_handoff,
    encode_session,
    encode_share,
)
from prevu.proxy.hooks import Allow, Reply, RequestHead
from prevu.routing import Route, Upstream

NOW = 1_700_000_000.0
UP = Upstream("127.0.0.1", 9)
PRIVATE = Route("pr-1.preview.test", UP, access="private", repo="acme/shop", preview="acme-shop-1")
STATIC = Route("staging.preview.test", UP, access="private")
PUBLIC = Route("pub.preview.test", UP, access="public")


def make(domain: str = "preview.test", public_url: str = "http://prevu.preview.test:8000"):
    clock = Clock()
    clock.advance(NOW)
    authority = Authority(
        settings=AuthSettings(public_url=public_url, domain=domain, session_ttl=3600),
        signer=Signer.from_secrets("k" * 32),
    )
    return AuthGate(authority, clock), authority, clock


def head(
    host: str = "pr-1.preview.test",
    target: bytes = b"/cart?x=1",
    accept: bytes = b"text/html,application/xhtml+xml",
    method: bytes = b"GET",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> RequestHead:
    headers = [(b"accept", accept), *(extra or [])]
    return RequestHead(method, target, host, "http", "198.51.100.7", headers)


def cookie(value: str) -> tuple[bytes, bytes]:
    return (b"cookie", b"other=1; prevu_session=" + value.encode())


def test_public_routes_pass_without_anything() -> None:
    """Public routes never need a session."""
    gate, _, _ = make()
    assert gate.check(PUBLIC, head("pub.preview.test", accept=b"")) == Allow()


def test_browser_without_session_is_sent_to_login_with_next() -> None:
    """A browser gets 302 to <public_url>/login?next=<original URL> (port kept)."""
    gate, _, _ = make()
    reply = gate.check(PRIVATE, head())
    assert isinstance(reply, Reply) and reply.status == 302
    location = dict(reply.headers)[b"location"]
    assert location == (
        b"http://prevu.preview.test:8000/login?next="
        b"http%3A%2F%2Fpr-1.preview.test%3A8000%2Fcart%3Fx%3D1"
    )


def test_non_browser_without_session_gets_401() -> None:
    """API clients and scripts get 401, not a redirect."""
    gate, _, _ = make()
    reply = gate.check(PRIVATE, head(accept=b"application/json"))
    assert isinstance(reply, Reply) and reply.status == 401


def test_valid_session_cookie_allows_with_user() -> None:
    """A valid session passes and names the user (X-Prevu-User)."""
    gate, authority, _ = make()
    token = encode_session(authority.signer, authority.new_session("alice", NOW))
    assert gate.check(PRIVATE, head(extra=[cookie(token)])) == Allow(user="alice")


def test_expired_session_cookie_is_refused() -> None:
    """After session_ttl the same cookie no longer passes."""
    gate, authority, clock = make()
    token = encode_session(authority.signer, authority.new_session("alice", NOW))
    clock.advance(3600)
    assert isinstance(gate.check(PRIVATE, head(extra=[cookie(token)])), Reply)


def test_tampered_session_cookie_is_refused() -> None:
    """A cookie whose payload was changed is refused."""
    gate, authority, _ = make()
    token = encode_session(authority.signer, authority.new_session("alice", NOW))
    tampered = token[:5] + ("x" if token[5] != "x" else "y") + token[6:]
    assert isinstance(gate.check(PRIVATE, head(extra=[cookie(tampered)])), Reply)


def test_revoked_session_is_refused() -> None:
    """After logout the session's id is refused everywhere."""
    gate, authority, _ = make()
    session = authority.new_session("alice", NOW)
    authority.revoke(session, NOW)
    token = encode_session(authority.signer, session)
    assert isinstance(gate.check(PRIVATE, head(extra=[cookie(token)])), Reply)


def test_repo_limited_session_only_opens_its_repos() -> None:
    """A GitHub repo-reader session opens previews of its repos only."""
    gate, authority, _ = make()
    session = authority.new_session("octo", NOW, repos=("acme/shop",))
    token = encode_session(authority.signer, session)
    assert gate.check(PRIVATE, head(extra=[cookie(token)])) == Allow(user="octo")
    other = Route("pr-2.preview.test", UP, access="private", repo="acme/blog")
    assert isinstance(gate.check(other, head("pr-2.preview.test", extra=[cookie(token)])), Reply)


def test_handoff_sets_a_host_only_cookie_and_redirects_to_the_clean_url() -> None:
    """?prevu_auth=<handoff> answers 302 to the same URL without it, setting the session."""
    gate, authority, _ = make(domain="localhost", public_url="http://prevu.localhost:8000")
    route = Route("pr-1.localhost", UP, access="private", repo="acme/shop")
    session = authority.new_session("alice", NOW)
    token = encode_handoff(authority.signer, session, "pr-1.localhost", NOW)
    reply = gate.check(route, head("pr-1.localhost", b"/cart?x=1&prevu_auth=" + token.encode()))
    assert isinstance(reply, Reply) and reply.status == 302
    headers = dict(reply.headers)
    assert headers[b"location"] == b"http://pr-1.localhost:8000/cart?x=1"
    set_cookie = headers[b"set-cookie"].decode()
    assert set_cookie.startswith("prevu_session=v1.") and "Domain" not in set_cookie
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    value = set_cookie.split(";")[0].split("=", 1)[1]
    assert gate.check(route, head("pr-1.localhost", extra=[cookie(value)])) == Allow(user="alice")


def test_a_handoff_token_works_once() -> None:
    """A handoff URL replayed (from history, a log, a proxy) no longer sets a session."""
    gate, authority, _ = make(domain="localhost", public_url="http://prevu.localhost:8000")
    route = Route("pr-1.localhost", UP, access="private", repo="acme/shop")
    session = authority.new_session("alice", NOW)
    token = encode_handoff(authority.signer, session, "pr-1.localhost", NOW)
    target = b"/?prevu_auth=" + token.encode()
    first = gate.check(route, head("pr-1.localhost", target))
    assert isinstance(first, Reply) and b"set-cookie" in dict(first.headers)
    again = gate.check(route, head("pr-1.localhost", target))
    assert isinstance(again, Reply) and b"set-cookie" not in dict(again.headers)
    # Two handoffs minted in the same second for the same host are distinct.
    assert encode_handoff(authority.signer, session, "pr-1.localhost", NOW) != token


def test_handoff_for_another_host_is_ignored() -> None:
    """A handoff minted for one host does not log in another."""
    gate, authority, _ = make()
    token = encode_handoff(
        authority.signer, authority.new_session("a", NOW), "pr-9.preview.test", NOW
    )
    reply = gate.check(PRIVATE, head(target=b"/?prevu_auth=" + token.encode(), accept=b"*/*"))
    assert isinstance(reply, Reply) and reply.status == 401


def test_share_link_sets_cookie_then_opens_until_expiry() -> None:
    """A share link redirects to the clean URL with a host-only cookie valid until expiry."""
    gate, authority, clock = make()
    token = encode_share(authority.signer, Share("pr-1.preview.test", NOW + 86400))
    reply = gate.check(PRIVATE, head(target=b"/?prevu_share=" + token.encode()))
    assert isinstance(reply, Reply) and reply.status == 302
    headers = dict(reply.headers)
    assert headers[b"location"] == b"http://pr-1.preview.test:8000/"
    assert b"Max-Age=86400" in headers[b"set-cookie"]
    assert b"Domain" not in headers[b"set-cookie"]
    share_cookie = cookie(token)
    assert gate.check(PRIVATE, head(extra=[share_cookie])) == Allow(user="~share")
    clock.advance(86399)
    assert gate.check(PRIVATE, head(extra=[share_cookie])) == Allow(user="~share")
    clock.advance(1)
    assert isinstance(gate.check(PRIVATE, head(extra=[share_cookie])), Reply)
    again = gate.check(PRIVATE, head(target=b"/?prevu_share=" + token.encode()))
    assert isinstance(again, Reply) and dict(again.headers)[b"location"].startswith(
        b"http://prevu.preview.test:8000/login"
    )


def test_share_link_does_not_open_other_previews() -> None:
    """A share link is for its one host."""
    gate, authority, _ = make()
    token = encode_share(authority.signer, Share("pr-2.preview.test", NOW + 60))
    assert isinstance(gate.check(PRIVATE, head(extra=[cookie(token)])), Reply)


def test_share_link_in_query_allows_non_get_directly() -> None:
    """A POST carrying a share token passes without a redirect."""
    gate, authority, _ = make()
    token = encode_share(authority.signer, Share("pr-1.preview.test", NOW + 60))
    target = b"/form?prevu_share=" + token.encode()
    assert gate.check(PRIVATE, head(target=target, method=b"POST")) == Allow(user="~share")


def test_bypass_header_opens_the_repos_previews_only() -> None:
    """X-Prevu-Bypass with the repo's token passes; another repo's token does not."""
    gate, authority, _ = make()
    good = bypass_token(authority.signer, repo="acme/shop").encode()
    bad = bypass_token(authority.signer, repo="acme/blog").encode()
    assert gate.check(PRIVATE, head(extra=[(b"x-prevu-bypass", good)])) == Allow(user="~bypass")
    assert isinstance(gate.check(PRIVATE, head(extra=[(b"x-prevu-bypass", bad)])), Reply)


def test_bypass_for_a_fixed_route_is_per_host() -> None:
    """Routes without a repository use a token derived from their host."""
    gate, authority, _ = make()
    token = bypass_token(authority.signer, host="staging.preview.test").encode()
    staging = head("staging.preview.test", extra=[(b"x-prevu-bypass", token)])
    assert gate.check(STATIC, staging) == Allow(user="~bypass")
