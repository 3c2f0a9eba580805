"""Parse CogVLM grounding output into (phrase, box) pairs, and write boxes for prompts.

The grounding model writes boxes inline, right after the words they belong to:

    a dog [[102,341,560,998]] on a sofa [[000,420,999,999]].

Each box is ``[[x0,y0,x1,y1]]``: integers in 0..999 (relative position x 1000, usually
zero-padded to three digits), origin at the top-left. Several boxes for one phrase share a
group, separated by ``;``: ``[[010,020,300,400;500,020,800,400]]``.

Conventions
-----------
Pixels. ``x_px = x_rel * width / 1000`` (same for y with height), as floats. This is the
inverse of how the coordinates are defined (relative position x 1000) and what the official
CogVLM demo draws with. A value of 999 lands at 0.999 * width, not on the far edge: the model
cannot say 1000, and inventing an edge snap would move every right/bottom edge by a different
amount per image size. The error this leaves is under width / 1000 pixels, i.e. under one
pixel for images up to 1000 px and a few pixels for very large ones. No clamping is needed:
values above 999 never reach the conversion (see below), so every pixel lies inside the image.

Phrases. The phrase of a box group is taken from the text between the previous group (or the
start of the text) and this group, approximating the noun chunk that the official CogVLM demo
picks with spaCy (the last noun phrase before the box), without an NLP dependency:

1. If that text has no words (``a dog [[...]] [[...]]``), the group continues the previous
   group's phrase. A group with no words before it and no previous group gets phrase ``""``
   and a problem entry (not for ``parse_boxes_for_phrase``, where the phrase is given).
2. Only the last clause counts: text after the last ``. ! ? ; :`` or ``,`` followed by
   a space, or a line break.
3. Within the clause, the phrase starts at the last determiner (an article, a possessive, a
   number, "some", "several", ...) or just after the last closed-class connective
   (preposition, conjunction, form of "be"/"have", relative pronoun), whichever comes later.
   If that leaves nothing, the whole clause is used.
4. A leading "a"/"an"/"the" is dropped and surrounding quotes/brackets/punctuation trimmed,
   so that the same object gets the same label whichever article the model chose. Numbers and
   possessives stay ("two dogs", "man's hat"). Case is kept as written.

So ``a dog [[...]] is lying on a sofa [[...]]`` gives "dog" and "sofa";
``A man [[...]] in front of the Eiffel Tower [[...]]`` gives "man" and "Eiffel Tower".
Verbs are an open class and are not recognised: ``a man wearing sunglasses [[...]]`` gives
"man wearing sunglasses".

Malformed groups. Model text never raises; everything wrong is described in ``problems`` and
the offending box is dropped, never guessed at:

- A box attempt is a bracketed run that opens with ``[[`` or closes with ``]]``, or a stray
  ``]]``; "[sic]"-style single brackets are ordinary text. Only groups opened by exactly
  ``[[`` and closed by exactly ``]]`` are read; extra brackets (nested groups), a single
  ``]``, a single ``[``, an unclosed ``[[`` or a stray ``]]`` drop the whole group.
  An unclosed ``[[`` (a truncated generation) takes only the coordinates after it out of the
  caption, so the words that follow survive; a stray ``]]`` takes the coordinates before it.
- Inside a readable group, each ``;``-separated box is checked on its own: it needs four
  ASCII integers (spaces around them are fine), each 0..999. A box with the wrong count, a
  non-integer, or a value above 999 is dropped; its siblings are kept. Dropping rather than
  clamping keeps the stored 0..999 values the model's own.
- A box with x1 < x0 or y1 < y0 is kept with the corners swapped (still the model's values,
  just reordered) and reported: the model named the two corners, only in the other order.
- A box with zero width or height (x0 == x1 or y0 == y1) is dropped and reported: it marks
  no area.

Caption. Every box attempt (well-formed or not) is replaced by a space, then runs of spaces
are collapsed, spaces before ``, . ; : ! ?`` and after ``(`` removed, and each line stripped.

Invalid image sizes (not positive) are caller errors and raise ``ValueError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REL_SCALE = 1000  # coordinates are relative position x 1000
REL_MAX = REL_SCALE - 1


@dataclass(frozen=True)
class Box:
    """One box; fields match ``pipeline.schema.BOX_TYPE`` so ``dataclasses.asdict`` is a row."""

    phrase: str
    x0: float  # pixels of the image whose width/height were given
    y0: float
    x1: float
    y1: float
    x0_rel: int  # the model's 0..999 values
    y0_rel: int
    x1_rel: int
    y1_rel: int


@dataclass(frozen=True)
class ParsedGrounding:
    caption: str  # the text with every box attempt removed and spacing tidied
    boxes: tuple[Box, ...]
    problems: tuple[str, ...]  # malformed or out-of-range groups, described for people


def parse_grounding(text: str, width: int, height: int) -> ParsedGrounding:
    """Parse a grounded caption: each box belongs to the phrase just before it."""
    return _parse(text, width, height, fixed_phrase=None)


def parse_boxes_for_phrase(text: str, phrase: str, width: int, height: int) -> ParsedGrounding:
    """Parse a referring-expression answer: every box in ``text`` belongs to ``phrase``.

    An answer without any box is reported in ``problems``: for this task the box is the answer.
    """
    parsed = _parse(text, width, height, fixed_phrase=phrase.strip())
    if parsed.boxes or parsed.problems:
        return parsed
    return ParsedGrounding(parsed.caption, (), (f"no box in the answer for {phrase.strip()!r}",))


def box_to_pixels(
    rel: tuple[int, int, int, int], width: int, height: int
) -> tuple[float, float, float, float]:
    """Model coordinates (0..999) to pixels: ``rel * size / 1000``; see the module docstring."""
    _check_size(width, height)
    if any(not 0 <= v <= REL_MAX for v in rel):
        raise ValueError(f"relative coordinates must be in 0..{REL_MAX}, got {rel}")
    x0, y0, x1, y1 = rel
    return (
        x0 * width / REL_SCALE,
        y0 * height / REL_SCALE,
        x1 * width / REL_SCALE,
        y1 * height / REL_SCALE,
    )


def format_box(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> str:
    """Pixels to the model's ``[[xxx,yyy,xxx,yyy]]`` form, for box-to-caption prompts.

    Each value is rounded to the nearest 1/1000 and clamped to 0..999, so a box touching the
    right or bottom edge is written as 999, the largest value the model knows.
    """
    _check_size(width, height)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"box corners out of order: ({x0}, {y0}, {x1}, {y1})")
    rel = (
        _to_rel(x0, width),
        _to_rel(y0, height),
        _to_rel(x1, width),
        _to_rel(y1, height),
    )
    return "[[" + ",".join(f"{v:03d}" for v in rel) + "]]"


def _to_rel(pixel: float, size: int) -> int:
    return min(REL_MAX, max(0, round(pixel * REL_SCALE / size)))


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")


# --- finding box attempts ------------------------------------------------------------------

# Brackets around a one-line body, or a run of ']]' that nothing opened.
_BRACKETS = re.compile(r"(?P<open>\[+)(?P<body>[^\[\]\n]*)(?P<close>\]*)|(?P<stray>\]{2,})")
# What a broken group takes out of the caption besides its brackets: coordinates, separators
# and spaces on its own line, never words (an unclosed '[[' reads forward, a stray ']]' back).
_COORDINATE_CHARACTERS = frozenset("0123456789,; \t")
_COORDINATE_PREFIX = re.compile(r"[0-9,; \t]*")
_INTEGER = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class _Attempt:
    start: int
    end: int
    body: str | None  # set only when bracketed exactly as [[...]]
    defect: str | None  # why the brackets are unreadable, when they are


def _find_attempts(text: str) -> list[_Attempt]:
    attempts = []
    pos = 0
    while (m := _BRACKETS.search(text, pos)) is not None:
        pos = m.end()
        if m["stray"] is not None:
            # Walked by hand, not by regex: a backward regex would rescan long runs of
            # digits (a looping generation) from every position.
            start, floor = m.start(), attempts[-1].end if attempts else 0
            while start > floor and text[start - 1] in _COORDINATE_CHARACTERS:
                start -= 1
            attempts.append(_Attempt(start, m.end(), None, "']]' without an opening '[['"))
            continue
        opens, closes = len(m["open"]), len(m["close"])
        if opens < 2 and closes < 2:
            continue  # ordinary bracketed text such as "[sic]"
        if opens == 2 and closes == 2:
            attempts.append(_Attempt(m.start(), m.end(), m["body"], None))
        elif closes == 0:
            end = m.end("open") + _COORDINATE_PREFIX.match(m["body"]).end()
            pos = end
            attempts.append(_Attempt(m.start(), end, None, "'[[' is never closed"))
        elif opens == 1:
            attempts.append(_Attempt(m.start(), m.end(), None, "opened with '[' instead of '[['"))
        elif closes == 1:
            attempts.append(_Attempt(m.start(), m.end(), None, "closed with ']' instead of ']]'"))
        else:
            attempts.append(_Attempt(m.start(), m.end(), None, "nested or extra brackets"))
    return attempts


# --- reading one group -----------------------------------------------------------------------


def _read_group(body: str, label: str, problems: list[str]) -> list[tuple[int, int, int, int]]:
    """The valid boxes of a ``[[...]]`` body; each invalid one is reported in ``problems``."""
    boxes = []
    for part in body.split(";"):
        described = f"{label}, box [{part.strip()}]"
        numbers = [n.strip() for n in part.split(",")]
        if not part.strip():
            problems.append(f"{label}: empty box between ';' separators; dropped")
            continue
        if len(numbers) != 4:
            problems.append(f"{described}: expected 4 numbers, got {len(numbers)}; dropped")
            continue
        if not all(_INTEGER.fullmatch(n) for n in numbers):
            problems.append(f"{described}: not all values are non-negative integers; dropped")
            continue
        x0, y0, x1, y1 = (int(n) for n in numbers)
        if max(x0, y0, x1, y1) > REL_MAX:
            problems.append(f"{described}: value above {REL_MAX}; dropped")
            continue
        if x0 == x1 or y0 == y1:
            problems.append(f"{described}: zero width or height; dropped")
            continue
        if x1 < x0 or y1 < y0:
            problems.append(f"{described}: corners in reverse order; swapped")
            x0, x1 = min(x0, x1), max(x0, x1)
            y0, y1 = min(y0, y1), max(y0, y1)
        boxes.append((x0, y0, x1, y1))
    return boxes


# --- phrases ---------------------------------------------------------------------------------

_ARTICLES = frozenset({"a", "an", "the"})
_DETERMINERS = _ARTICLES | frozenset(
    """this these those his her its their my our your some several many few both each every
    another multiple various one two three four five six seven eight nine ten eleven twelve
    dozens""".split()
)
_CONNECTIVES = frozenset(
    """about above across after against along alongside amid among around at atop before
    behind below beneath beside besides between beyond by down during for from in inside into
    near next of off on onto opposite out outside over past through throughout to toward
    towards under underneath until up upon via with within without
    and or but nor so yet while whereas as if than
    is are was were be been being am has have had
    that which who whom whose where when there""".split()
)
_CLAUSE_BREAK = re.compile(r"[.!?;:,](?=\s)|\n")
_WORD_CHARACTER = re.compile(r"\w")
_EDGE_PUNCTUATION = " \t\"'“”‘’()[]{}*_-,.;:!?"


def _phrase_before(segment: str) -> str:
    """The phrase a box refers to, from the text between it and the previous group."""
    clause = _CLAUSE_BREAK.split(segment.rstrip(_EDGE_PUNCTUATION + "\n"))[-1]
    words = clause.split()
    bare = [w.strip(_EDGE_PUNCTUATION).lower() for w in words]
    start = 0
    for i, word in enumerate(bare):
        if word in _DETERMINERS or word.isdigit():
            start = max(start, i)
        elif word in _CONNECTIVES:
            start = max(start, i + 1)
    chosen = words[start:] or words
    if len(chosen) > 1 and chosen[0].strip(_EDGE_PUNCTUATION).lower() in _ARTICLES:
        chosen = chosen[1:]
    return " ".join(chosen).strip(_EDGE_PUNCTUATION)


# --- caption ---------------------------------------------------------------------------------

_SPACE_RUN = re.compile(r"[ \t]+")
_SPACE_BEFORE_PUNCTUATION = re.compile(r" +([,.;:!?])")
_SPACE_AFTER_PAREN = re.compile(r"\( +")


def _tidy(text: str) -> str:
    text = _SPACE_RUN.sub(" ", text)
    text = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", text)
    text = _SPACE_AFTER_PAREN.sub("(", text)
    return "\n".join(line.strip() for line in text.split("\n")).strip()


# --- putting it together ---------------------------------------------------------------------


def _parse(text: str, width: int, height: int, fixed_phrase: str | None) -> ParsedGrounding:
    _check_size(width, height)
    boxes: list[Box] = []
    problems: list[str] = []
    caption_parts: list[str] = []
    previous_end = 0
    previous_phrase: str | None = None
    for number, attempt in enumerate(_find_attempts(text), start=1):
        segment = text[previous_end : attempt.start]
        caption_parts += [segment, " "]
        previous_end = attempt.end

        if fixed_phrase is not None:
            phrase = fixed_phrase
        elif _WORD_CHARACTER.search(segment) or previous_phrase is None:
            phrase = _phrase_before(segment)
        else:
            phrase = previous_phrase
        previous_phrase = phrase

        group_text = text[attempt.start : attempt.end].strip()
        label = f"box group {number} {group_text!r}" + (f" after {phrase!r}" if phrase else "")
        if attempt.body is None:
            problems.append(f"{label}: {attempt.defect}; dropped")
            continue
        found = _read_group(attempt.body, label, problems)
        if found and not phrase and fixed_phrase is None:
            problems.append(f"{label}: no phrase before it; kept with an empty phrase")
        for rel in found:
            boxes.append(Box(phrase, *box_to_pixels(rel, width, height), *rel))
    caption_parts.append(text[previous_end:])
    return ParsedGrounding(_tidy("".join(caption_parts)), tuple(boxes), tuple(problems))


# --- CogAgent's grounded operations ----------------------------------------------------------

AGENT_OPERATION = "Grounded Operation:"
_AT_THE_BOX = re.compile(r"\s*(?:\bat\s+the\s+(?:box|point)|\bat)\s*$", re.IGNORECASE)


def parse_grounded_operation(text: str, width: int, height: int) -> ParsedGrounding:
    """Parse a CogAgent agent answer (spec: cogagent.md "GUI-agent prompts and outputs").

    ``Plan: ... Next Action: ... Grounded Operation:[combobox] Search -> TYPE: CogVLM at the box
    [[212,498,787,564]]``. The operation is free-form text (no action grammar), so it is taken as-is
    after its label; every ``[[...]]`` group in it is read, 4 numbers a box and 2 a point (kept as a
    box with x0 == x1 and y0 == y1), ``;`` between several. A group's phrase is the operation text
    before it (from the previous group), without a trailing "at the box": here
    ``[combobox] Search -> TYPE: CogVLM``. Boxes before the label (in the plan) are not read. The
    caption is the whole answer with every box attempt removed, tidied as ``parse_grounding`` does.
    """
    _check_size(width, height)
    start = text.index(AGENT_OPERATION) + len(AGENT_OPERATION) if AGENT_OPERATION in text else 0
    operation = text[start:]
    boxes: list[Box] = []
    problems: list[str] = []
    previous_end, phrase = 0, ""
    for number, attempt in enumerate(_find_attempts(operation), start=1):
        segment = _AT_THE_BOX.sub("", operation[previous_end : attempt.start]).strip(" \t\n,;:")
        phrase = segment or phrase
        previous_end = attempt.end
        label = f"operation group {number} {operation[attempt.start : attempt.end].strip()!r}"
        if attempt.body is None:
            problems.append(f"{label}: {attempt.defect}; dropped")
            continue
        for rel in _read_boxes_or_points(attempt.body, label, problems):
            boxes.append(Box(phrase, *box_to_pixels(rel, width, height), *rel))
    caption_parts, end = [], 0
    for attempt in _find_attempts(text):
        caption_parts += [text[end : attempt.start], " "]
        end = attempt.end
    caption_parts.append(text[end:])
    return ParsedGrounding(_tidy("".join(caption_parts)), tuple(boxes), tuple(problems))


def _read_boxes_or_points(body: str, label: str, problems: list[str]) -> list[tuple[int, int, int, int]]:
    found = []
    for part in body.split(";"):
        numbers = [n.strip() for n in part.split(",")]
        if len(numbers) == 2 and all(_INTEGER.fullmatch(n) for n in numbers):
            x, y = (int(n) for n in numbers)
            if max(x, y) > REL_MAX:
                problems.append(f"{label}, point [{part.strip()}]: value above {REL_MAX}; dropped")
                continue
            found.append((x, y, x, y))
        else:
            found += _read_group(part, label, problems)
    return found
