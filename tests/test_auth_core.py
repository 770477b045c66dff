"""The pure core of reviewer access: passwords, tokens, next, cookies, throttle."""

from __future__ import annotations

import pytest

from prevu.auth.limiter import LoginLimiter
from prevu.auth.passwords import PasswordHash, hash_password, parse_users, verify_password
from prevu.auth.rules import (
    AuthSettings,
    add_param,
    client_address,
    cookie_values,
    endpoint_port,
    request_origin,
    safe_next,
    set_cookie,
    split_param,
)
from prevu.auth.tokens import (
    Session,
    Share,
    Signer,
    bypass_token,
    check_bypass,
    check_csrf,
    decode_handoff,
    decode_session,
    decode_share,
    encode_csrf,
    encode_handoff,
    encode_session,
    encode_share,
)
from prevu.errors import ConfigError

FAST = 1 << 10
SECRET = "s" * 32
NOW = 1_700_000_000.0


def signer(*previous: str, current: str = SECRET) -> Signer:
    return Signer.from_secrets(current, previous)


# --- passwords -------------------------------------------------------------------


def test_hash_is_self_describing_and_salted() -> None:
    """Two hashes of one password differ (random salt) and both verify."""
    first, second = hash_password("hunter2", n=FAST), hash_password("hunter2", n=FAST)
    assert first != second
    assert first.startswith("scrypt$n=1024,r=8,p=1$")
    assert verify_password("hunter2", first) and verify_password("hunter2", second)
    assert not verify_password("hunter3", first)


def test_default_cost_round_trips() -> None:
    """The default cost (n=2^15) hashes and verifies within scrypt's memory limit."""
    encoded = hash_password("correct horse")
    assert PasswordHash.parse(encoded).n == 1 << 15
    assert verify_password("correct horse", encoded)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bcrypt$x$y$z",
        "scrypt$n=1024$AAAA$BBBB",
        "scrypt$n=1000,r=8,p=1$c2FsdHNhbHQ=$" + "A" * 44,
        "scrypt$n=1048576000,r=8,p=1$c2FsdHNhbHQ=$" + "A" * 44,
        "scrypt$n=1024,r=8,p=1$!!$!!",
    ],
)
def test_malformed_or_dangerous_hashes_are_refused(text: str) -> None:
    """Unknown schemes, missing parameters, non-power-of-two or huge n are refused."""
    with pytest.raises(ValueError):
        PasswordHash.parse(text)


def test_users_file_parses_comments_and_checks_passwords() -> None:
    """name:hash lines with comments and blanks; check() is right for good, bad and unknown."""
    alice, bob = hash_password("a-pass", n=FAST), hash_password("b", n=FAST)
    text = f"# reviewers\n\nalice:{alice}\nbob:{bob}\n"
    users = parse_users(text, "users")
    assert len(users) == 2
    assert users.check("alice", "a-pass")
    assert not users.check("alice", "b")
    assert not users.check("mallory", "a-pass")


def test_unknown_users_cost_a_hash_like_known_ones() -> None:
    """The dummy hash has the users' cost, so timing does not reveal which names exist."""
    users = parse_users(f"alice:{hash_password('x', n=FAST)}\n")
    assert users.dummy.n == FAST


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("alice\n", "line 1", "expected name:hash"),
        ("\n\nal ice:scrypt$x\n", "line 3", "invalid user name"),
        ("alice:plaintext\n", "line 1", "prevu hash-password"),
    ],
)
def test_users_file_errors_name_the_line(text: str, where: str, reason: str) -> None:
    """A bad users file raises ConfigError with file, line and reason."""
    with pytest.raises(ConfigError) as caught:
        parse_users(text, "/etc/prevu/users")
    assert caught.value.path == "/etc/prevu/users"
    assert caught.value.key == where
    assert reason in caught.value.reason


def test_users_file_refuses_duplicates() -> None:
    """A name listed twice is an error, not a silent override."""
    line = f"alice:{hash_password('x', n=FAST)}\n"
    with pytest.raises(ConfigError, match="listed twice"):
        parse_users(line + line)


# --- tokens -------------------------------------------------------------------


def test_session_round_trip() -> None:
    """A session cookie decodes to the same user, expiry and id."""
    session = Session(user="alice", expires=NOW + 60)
    assert decode_session(signer(), encode_session(signer(), session), NOW) == session


def test_expired_session_is_refused() -> None:
    """At or after its expiry a session is refused."""
    token = encode_session(signer(), Session(user="alice", expires=NOW + 60))
    assert decode_session(signer(), token, NOW + 59) is not None
    assert decode_session(signer(), token, NOW + 60) is None


@pytest.mark.parametrize("position", [3, 10, -2])
def test_tampered_session_is_refused(position: int) -> None:
    """Changing any character of the cookie (payload or mac) invalidates it."""
    token = encode_session(signer(), Session(user="alice", expires=NOW + 60))
    flipped = "A" if token[position] != "A" else "B"
    tampered = token[:position] + flipped + token[position + 1 :]
    assert decode_session(signer(), tampered, NOW) is None


def test_forged_payload_with_old_mac_is_refused() -> None:
    """Swapping in another user's payload keeps the old mac and fails."""
    token = encode_session(signer(), Session(user="alice", expires=NOW + 60))
    other = encode_session(signer(), Session(user="admin", expires=NOW + 60))
    forged = ".".join([token.split(".")[0], other.split(".")[1], token.split(".")[2]])
    assert decode_session(signer(), forged, NOW) is None


@pytest.mark.parametrize(
    "junk", ["", "x", "v1..", "v2.e30.AAAA", "v1.!!.!!", "a.b.c.d", "v1." * 2000]
)
def test_junk_cookies_are_refused(junk: str) -> None:
    """Garbage never decodes and never raises."""
    assert decode_session(signer(), junk, NOW) is None


def test_rotation_accepts_previous_secret_and_signs_with_new() -> None:
    """Cookies signed with a secret moved to cookie_secret_previous still work."""
    old = Signer.from_secrets("o" * 32)
    rotated = signer("o" * 32)
    token = encode_session(old, Session(user="alice", expires=NOW + 60))
    assert decode_session(rotated, token, NOW) is not None
    assert decode_session(signer(), token, NOW) is None  # once dropped from previous
    assert decode_session(old, encode_session(rotated, Session("bob", NOW + 60)), NOW) is None


def test_tokens_do_not_cross_purposes() -> None:
    """A share token is not a session, a CSRF token is not a share link."""
    share = encode_share(signer(), Share(host="pr-1.example.com", expires=NOW + 60))
    assert decode_session(signer(), share, NOW) is None
    csrf = encode_csrf(signer(), "nonce-nonce-nonce-1", NOW)
    assert decode_share(signer(), csrf, "pr-1.example.com", NOW) is None


def test_share_is_bound_to_its_host_and_expires() -> None:
    """A share link opens its one host until its expiry."""
    token = encode_share(signer(), Share(host="pr-1.example.com", expires=NOW + 3600))
    assert decode_share(signer(), token, "PR-1.example.com", NOW) is not None
    assert decode_share(signer(), token, "pr-2.example.com", NOW) is None
    assert decode_share(signer(), token, "pr-1.example.com", NOW + 3600) is None


def test_handoff_carries_the_session_to_one_host_briefly() -> None:
    """A handoff token gives its host the session (with the session's expiry) for 60s."""
    session = Session(user="alice", expires=NOW + 3600)
    token = encode_handoff(signer(), session, "pr-1.localhost", NOW)
    assert decode_handoff(signer(), token, "pr-1.localhost", NOW + 30) == session
    assert decode_handoff(signer(), token, "pr-2.localhost", NOW) is None
    assert decode_handoff(signer(), token, "pr-1.localhost", NOW + 61) is None
    assert decode_session(signer(), token, NOW) is None


def test_csrf_token_is_bound_to_the_pre_session_nonce() -> None:
    """The CSRF token checks only with its own nonce, unexpired and unforged."""
    token = encode_csrf(signer(), "nonce-aaaaaaaaaaaa", NOW)
    assert check_csrf(signer(), token, "nonce-aaaaaaaaaaaa", NOW)
    assert not check_csrf(signer(), token, "nonce-bbbbbbbbbbbb", NOW)
    assert not check_csrf(signer(), token, None, NOW)
    assert not check_csrf(signer(), token, "nonce-aaaaaaaaaaaa", NOW + 3601)
    forged = encode_csrf(Signer.from_secrets("f" * 32), "nonce-aaaaaaaaaaaa", NOW)
    assert not check_csrf(signer(), forged, "nonce-aaaaaaaaaaaa", NOW)


def test_bypass_tokens_are_per_repo_and_survive_rotation() -> None:
    """Each repo has its own bypass token; the old secret's token keeps working in rotation."""
    shop = bypass_token(signer(), repo="acme/shop")
    assert check_bypass(signer(), shop, "ACME/shop", "pr-1.example.com")
    assert not check_bypass(signer(), shop, "acme/blog", "pr-1.example.com")
    assert not check_bypass(signer(), shop, None, "pr-1.example.com")
    old = bypass_token(Signer.from_secrets("o" * 32), repo="acme/shop")
    assert check_bypass(signer("o" * 32), old, "acme/shop", "")
    assert check_bypass(
        signer(), bypass_token(signer(), host="staging.example.com"), None, "staging.example.com"
    )


# --- rules ------------------------------------------------------------------------

SETTINGS = AuthSettings(public_url="https://prevu.example.com", domain="preview.example.com")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://pr-1.preview.example.com/cart?x=1", "https://pr-1.preview.example.com/cart?x=1"),
        ("http://pr-1.preview.example.com:8000/", "http://pr-1.preview.example.com:8000/"),
        ("https://prevu.example.com/api", "https://prevu.example.com/api"),
        ("/dashboard", "https://prevu.example.com/dashboard"),
        ("https://evil.com/", None),
        ("https://preview.example.com.evil.com/", None),
        ("https://evilpreview.example.com/", None),
        ("https://preview.example.com/", None),
        ("//evil.com/", None),
        ("/\\evil.com", None),
        ("javascript:alert(1)", None),
        ("ftp://pr-1.preview.example.com/", None),
        ("https://user@pr-1.preview.example.com/", None),
        ("https://pr-1.preview.example.com@evil.com/", None),
        ("https://evil.com\\@pr-1.preview.example.com/", None),
        ("https://pr-1.preview.example.com\t/", None),
        ("https://pr-1.preview.example.com:99999/", None),
        ("", None),
        (None, None),
    ],
)
def test_next_only_points_at_the_control_host_or_the_domain(
    value: str | None, expected: str | None
) -> None:
    """`next` may only lead to the control host or a host under .<domain>, over http(s)."""
    assert safe_next(SETTINGS, value) == expected


def test_cookie_domain_is_dropped_for_single_label_domains() -> None:
    """Browsers refuse Domain=localhost, so that case is host-only (plus handoffs)."""
    local = AuthSettings(public_url="http://prevu.localhost:8000", domain="localhost")
    assert local.cookie_domain is None
    assert not local.covered_by_cookie("pr-1.localhost")
    assert SETTINGS.cookie_domain == "preview.example.com"
    # The control host is outside the domain: no domain cookie is set, so handoffs.
    assert not SETTINGS.covered_by_cookie("pr-1.preview.example.com")
    inside = AuthSettings(
        public_url="https://prevu.preview.example.com", domain="preview.example.com"
    )
    assert inside.covered_by_cookie("pr-1.preview.example.com")
    assert not inside.covered_by_cookie("prevu.example.com")
    assert SETTINGS.secure and not local.secure


def test_set_cookie_attributes() -> None:
    """Session cookies are HttpOnly, SameSite=Lax, Secure under TLS, Domain when given."""
    value = set_cookie("prevu_session", "v", max_age=60, secure=True, domain="example.com")
    assert value == (
        b"prevu_session=v; Path=/; Domain=example.com; Max-Age=60; HttpOnly; Secure; SameSite=Lax"
    )
    assert b"Secure" not in set_cookie("a", "b", max_age=None, secure=False)


def test_cookie_values_keeps_duplicates() -> None:
    """A host-only and a domain cookie of the same name are both seen."""
    headers = [b"a=1; prevu_session=x", b"prevu_session=y;b=2"]
    assert cookie_values(headers, "prevu_session") == ["x", "y"]


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", [b"1.2.3.4"], "203.0.113.9"),
        ("127.0.0.1", [b"1.2.3.4, 198.51.100.7"], "198.51.100.7"),
        ("127.0.0.1", [], "127.0.0.1"),
        ("10.0.0.5", [b"198.51.100.7, 10.0.0.9"], "198.51.100.7"),
        ("127.0.0.1", [b"not-an-ip"], "127.0.0.1"),
    ],
)
def test_client_address_trusts_only_our_proxies(
    peer: str, forwarded: list[bytes], expected: str
) -> None:
    """X-Forwarded-For counts only from loopback (prevu's proxy) or trusted_proxies."""
    import ipaddress

    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address(peer, forwarded, trusted) == expected


def test_query_parameters_are_split_and_added() -> None:
    """A token parameter is taken out of a target; others and the path stay."""
    assert split_param("/a?x=1&prevu_share=T&y=2", "prevu_share") == ("T", "/a?x=1&y=2")
    assert split_param("/a?x=1", "prevu_share") == (None, "/a?x=1")
    assert split_param("/?prevu_share=T", "prevu_share") == ("T", "/")
    assert add_param("http://h:8000/p?x=1", "k", "v") == "http://h:8000/p?x=1&k=v"


def test_request_origin_fills_in_the_proxy_port() -> None:
    """A host without port gets public_url's port when the scheme matches."""
    assert request_origin("http", "pr-1.localhost", "http://prevu.localhost:8000") == (
        "http://pr-1.localhost:8000"
    )
    assert request_origin("http", "h:9", "http://prevu.localhost:8000") == "http://h:9"
    assert request_origin("https", "h", "http://prevu.localhost:8000") == "https://h:8000"
    assert request_origin("https", "h", "https://prevu.example.com", 8443) == "https://h"
    assert request_origin("http", "h", "http://prevu.localhost:8001", 8000) == "http://h:8000"
    assert endpoint_port("tcp:8000:interface=127.0.0.1") == 8000
    assert endpoint_port("tcp:port=81") == 81
    assert endpoint_port("unix:/run/prevu.sock") is None


# --- throttle -----------------------------------------------------------------------


def test_limiter_blocks_a_user_after_five_failures_until_the_window_passes() -> None:
    """Five failures for one user: the sixth try waits; after the window it may try again."""
    limiter = LoginLimiter(user_limit=5, address_limit=100, window=900)
    for second in range(5):
        assert limiter.retry_after("alice", f"198.51.100.{second}", NOW + second) is None
        limiter.failed("alice", f"198.51.100.{second}", NOW + second)
    wait = limiter.retry_after("ALICE", "203.0.113.1", NOW + 10)
    assert wait == pytest.approx(890)
    assert limiter.retry_after("alice", "203.0.113.1", NOW + 900) is None
    assert limiter.retry_after("bob", "203.0.113.1", NOW + 10) is None


def test_limiter_blocks_an_address_guessing_many_users() -> None:
    """Failures from one address across many names block that address."""
    limiter = LoginLimiter(user_limit=5, address_limit=3, window=60)
    for index in range(3):
        limiter.failed(f"user{index}", "198.51.100.7", NOW)
    assert limiter.retry_after("someone", "198.51.100.7", NOW + 1) == pytest.approx(59)
    assert limiter.retry_after("someone", "198.51.100.8", NOW + 1) is None


def test_limiter_success_forgets_the_users_failures() -> None:
    """A good login resets the user's count (not the address's)."""
    limiter = LoginLimiter(user_limit=2, address_limit=3, window=60)
    limiter.failed("alice", "a", NOW)
    limiter.succeeded("alice")
    limiter.failed("alice", "a", NOW)
    assert limiter.retry_after("alice", "b", NOW) is None


def test_limiter_memory_is_bounded() -> None:
    """A flood of distinct names does not grow the table past max_keys."""
    limiter = LoginLimiter(max_keys=100)
    for index in range(1000):
        limiter.failed(f"user{index}", "a", NOW)
    assert len(limiter._failures) <= 101
