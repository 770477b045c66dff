"""Pure HTTP helpers of the proxy."""

from __future__ import annotations

import pytest

from prevu.proxy.http import (
    chunk,
    connection_tokens,
    cookie_value,
    page,
    simple_response,
    strip_session_cookie,
    waiting_page,
)


@pytest.mark.parametrize(
    ("cookie", "expected"),
    [
        (b"a=1", b"a=1"),
        (b"prevu_session=secret", b""),
        (b"a=1; prevu_session=secret; b=2", b"a=1; b=2"),
        (b"prevu_session=x;a=1", b"a=1"),
        (b"prevu_sessionx=keep", b"prevu_sessionx=keep"),
        (b"not_prevu_session=keep; prevu_session=drop", b"not_prevu_session=keep"),
    ],
)
def test_session_cookie_is_removed_and_others_kept(cookie: bytes, expected: bytes) -> None:
    assert strip_session_cookie(cookie) == expected


def test_connection_tokens_are_lower_cased_and_split() -> None:
    assert connection_tokens([b"Keep-Alive, X-Foo", b" close"]) == {
        b"keep-alive",
        b"x-foo",
        b"close",
    }


def test_cookie_value_finds_a_named_cookie() -> None:
    assert cookie_value([b"a=1; prevu_session=abc"], b"prevu_session") == b"abc"
    assert cookie_value([b"a=1"], b"prevu_session") is None


def test_chunk_framing() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


def test_pages_escape_the_host_and_show_no_traceback() -> None:
    body = page(404, "Not Found", "nothing here", "<script>x</script>.test")
    assert b"&lt;script&gt;" in body and b"<script>" not in body
    assert b"Traceback" not in body


def test_waiting_page_refreshes_itself() -> None:
    assert b'http-equiv=refresh content="5"' in waiting_page("a.test", "building", 5)


def test_simple_response_frames_with_content_length() -> None:
    response = simple_response(404, b"abc", close=True)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Length: 3" in head and b"Connection: close" in head
    assert body == b"abc"
    assert simple_response(404, b"abc", head_only=True).endswith(b"\r\n\r\n")
