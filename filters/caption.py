"""Caption filters.

Words are runs of non-whitespace, as `str.split()` with no argument finds them (any
Unicode whitespace separates). Text written without spaces, such as Chinese or Japanese,
therefore counts as one word per run: set `min_words` with that in mind. Length is the
number of characters (Unicode code points) of the caption as stored, not of its bytes.
A caption that is not a string (None, or a NaN from a pandas column) counts as empty.
"""

from __future__ import annotations

from filters.findings import Finding, Problem


def check_caption(
    caption: object,
    *,
    drop_empty: bool = False,
    min_words: int = 0,
    max_length: int | None = None,
) -> Finding | None:
    text = caption if isinstance(caption, str) else ""
    if drop_empty and not text.strip():
        return Finding(Problem.CAPTION_EMPTY, "caption is missing or blank")
    words = len(text.split())
    if words < min_words:
        return Finding(Problem.CAPTION_TOO_SHORT, f"{words} words below {min_words}")
    if max_length is not None and len(text) > max_length:
        return Finding(Problem.CAPTION_TOO_LONG, f"{len(text)} characters above {max_length}")
    return None
