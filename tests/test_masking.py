"""Secret masking: exact values replaced in log lines, best-effort by design."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from prevu.masking import MASK, MIN_LENGTH, mask, masker


def test_every_secret_value_is_masked() -> None:
    line = "clone https://x-access-token:ghp_abcdef123456@github.com/a/b with hook s3cr3t-hook"
    masked = mask(line, ["ghp_abcdef123456", "s3cr3t-hook", None])
    assert masked == f"clone https://x-access-token:{MASK}@github.com/a/b with hook {MASK}"


def test_a_secret_containing_another_is_masked_whole() -> None:
    assert mask("token=abcdef-ghijkl", ["abcdef", "abcdef-ghijkl"]) == f"token={MASK}"


def test_short_values_are_not_masked() -> None:
    assert mask("a 1 b", ["1", "ab"]) == "a 1 b"


def test_each_line_of_a_pem_key_is_masked() -> None:
    key = "-----BEGIN KEY-----\nMIIEowIBAAKCAQEA1234\nabcdefghijkl\n-----END KEY-----\n"
    assert "MIIEowIBAAKCAQEA1234" not in mask("leaked MIIEowIBAAKCAQEA1234 here", [key])


def test_encoded_values_are_not_caught_as_documented() -> None:
    """Best-effort: a base64 or split value passes (docs/forge.md says so)."""
    assert mask("Z2hwX2FiY2RlZjEyMzQ1Ng==", ["ghp_abcdef123456"]) == "Z2hwX2FiY2RlZjEyMzQ1Ng=="


def test_nothing_to_mask_is_the_identity() -> None:
    hide = masker([None, ""])
    assert hide("anything") == "anything"


@given(
    secret=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=MIN_LENGTH),
    before=st.text(),
    after=st.text(),
)
def test_a_secret_never_survives_masking(secret: str, before: str, after: str) -> None:
    secret = secret.strip()
    if len(secret) < MIN_LENGTH or "\n" in secret or "\r" in secret:
        return
    assert secret not in mask(before + secret + after, [secret])
