import math

import pytest

from filters.caption import check_caption
from filters.findings import Problem

# caption, options, expected reason (None: kept), expected message (None: not checked)
CASES = [
    ("a cat", {}, None, None),
    (None, {}, None, None),  # nothing asked: even a missing caption passes
    ("", {}, None, None),
    (None, {"drop_empty": True}, Problem.CAPTION_EMPTY, "caption is missing or blank"),
    ("", {"drop_empty": True}, Problem.CAPTION_EMPTY, None),
    (" \t\n\u3000", {"drop_empty": True}, Problem.CAPTION_EMPTY, None),  # ideographic space too
    (math.nan, {"drop_empty": True}, Problem.CAPTION_EMPTY, None),  # pandas' missing value
    (".", {"drop_empty": True}, None, None),
    ("a cat", {"min_words": 2}, None, None),  # equal to the minimum: kept
    ("cat", {"min_words": 2}, Problem.CAPTION_TOO_SHORT, "1 words below 2"),
    ("  a \t cat\n", {"min_words": 2}, None, None),  # runs of whitespace separate once
    ("a\u00a0cat", {"min_words": 2}, None, None),  # no-break space separates
    ("一只猫坐在垫子上", {"min_words": 2}, Problem.CAPTION_TOO_SHORT, "1 words below 2"),
    (None, {"min_words": 1}, Problem.CAPTION_TOO_SHORT, "0 words below 1"),
    ("   ", {"min_words": 1}, Problem.CAPTION_TOO_SHORT, None),
    (None, {"drop_empty": True, "min_words": 3}, Problem.CAPTION_EMPTY, None),  # emptiness first
    ("abcde", {"max_length": 5}, None, None),  # equal to the maximum: kept
    ("abcdef", {"max_length": 5}, Problem.CAPTION_TOO_LONG, "6 characters above 5"),
    ("ééééé", {"max_length": 5}, None, None),  # characters, not UTF-8 bytes
    ("a b c d e f", {"min_words": 2, "max_length": 5}, Problem.CAPTION_TOO_LONG, None),
    ("x" * 100, {"drop_empty": True, "min_words": 1, "max_length": None}, None, None),
]


@pytest.mark.parametrize("caption, options, reason, message", CASES)
def test_check_caption(caption, options, reason, message):
    result = check_caption(caption, **options)
    if reason is None:
        assert result is None
        return
    assert result.problem == reason
    if message is not None:
        assert result.message == message
