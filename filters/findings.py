"""What a filter found wrong with a row: the kind of problem and the facts measured.

Filters sit below the pipeline and know nothing of its reason codes or statuses;
pipeline/schema.py maps every `Problem` to the reason code a row gets for it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Problem(enum.Enum):
    NOT_AN_IMAGE = enum.auto()  # no image format recognises the bytes
    BROKEN_IMAGE = enum.auto()  # a recognised format whose header or pixels do not decode
    IMPOSSIBLE_SIZE = enum.auto()  # the header claims a side of 0, less, or more than any image has
    TOO_MANY_PIXELS = enum.auto()
    TOO_SMALL = enum.auto()
    ASPECT_RATIO = enum.auto()
    CAPTION_EMPTY = enum.auto()
    CAPTION_TOO_SHORT = enum.auto()
    CAPTION_TOO_LONG = enum.auto()
    DUPLICATE = enum.auto()
    TOO_SHORT = enum.auto()  # a video below --min-duration
    TOO_LONG = enum.auto()  # a video above --max-duration


@dataclass(frozen=True)
class Finding:
    """Why a filter would not keep a row: the problem and a message for people."""

    problem: Problem
    message: str
