import hashlib

import pytest

from filters.dedup import content_sha256, duplicate_finding
from filters.findings import Problem
from tests import images


@pytest.mark.parametrize(
    "a, b, same",
    [
        (images.jpeg(), images.jpeg(), True),  # made twice, byte for byte equal
        (b"", b"", True),
        (images.jpeg(), images.jpeg(quality=80), False),
        (images.png(), images.png()[:-1], False),
        (images.png(64, 48), images.png(48, 64), False),
    ],
)
def test_content_sha256_depends_only_on_the_bytes(a, b, same):
    assert (content_sha256(a) == content_sha256(b)) is same


def test_content_sha256_is_hex_sha256():
    assert content_sha256(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(content_sha256(b"")) == 64


def test_duplicate_finding_names_the_first_row():
    sha = content_sha256(b"abc")
    finding = duplicate_finding(sha, "00000000000042")
    assert finding.problem == Problem.DUPLICATE
    assert "00000000000042" in finding.message and sha in finding.message
