"""Preview ids and hosts from the `[server] label` template."""

from __future__ import annotations

import pytest

from prevu.naming import MAX_LABEL, PreviewName, dns_safe, is_dns_label, preview_label


@pytest.mark.parametrize(
    ("template", "repo", "number", "branch", "expected"),
    [
        ("pr-{number}-{repo}", "acme/shop", 42, "", "pr-42-shop"),
        ("pr-{number}-{repo}", "Codertocat/Hello-World", 2, "", "pr-2-hello-world"),
        ("pr-{number}-{repo}", "group/sub/My_App", 7, "", "pr-7-my-app"),
        ("{owner}-{repo}-{number}", "group/sub/app", 7, "", "group-sub-app-7"),
        ("{branch}-{repo}", "acme/shop", 1, "feature/Login Page", "feature-login-page-shop"),
        ("{branch}", "acme/shop", 1, "---", "branch"),
        ("pr-{number}-{repo}", "acme/.shop.", 3, "", "pr-3-shop"),
    ],
)
def test_labels(template: str, repo: str, number: int, branch: str, expected: str) -> None:
    """Placeholders are folded into one DNS-safe label."""
    assert preview_label(template, repo, number, branch) == expected


def test_long_labels_are_cut_with_a_hash() -> None:
    """A label over 63 characters is cut and keeps a hash, so two long names stay distinct."""
    one = preview_label("{branch}", "a/b", 1, "x" * 80 + "one")
    two = preview_label("{branch}", "a/b", 1, "x" * 80 + "two")
    assert len(one) <= MAX_LABEL and len(two) <= MAX_LABEL
    assert one != two
    assert is_dns_label(one) and is_dns_label(two)


def test_salt_tells_apart_repos_that_fold_alike() -> None:
    """acme/shop and other/shop give distinct ids when salted."""
    plain = preview_label("pr-{number}-{repo}", "acme/shop", 1)
    salted = preview_label("pr-{number}-{repo}", "other/shop", 1, salt="github:other/shop")
    assert plain != salted and salted.startswith("pr-1-shop-") and is_dns_label(salted)


@pytest.mark.parametrize("text", ["ABC", "a_b", "a..b", "-a-", "ünï"])
def test_dns_safe_is_a_label(text: str) -> None:
    """dns_safe output is always lower-case letters, digits and inner dashes."""
    folded = dns_safe(text)
    assert folded == "" or is_dns_label(folded)


def test_preview_name() -> None:
    """The host is <label>.<domain>; the URL keeps a non-default port."""
    name = PreviewName.build("pr-1-shop", "localhost", "http", 8000)
    assert (name.host, name.url) == ("pr-1-shop.localhost", "http://pr-1-shop.localhost:8000/")
    assert PreviewName.build("x", "example.com", "https", 443).url == "https://x.example.com/"
