"""Free-text search's pure part: the words an operation is found by, the index keys they are filed
under, and what a query asks for. Nothing here reads NATS (ktrdr.transport.opsindex reads the keys).

The indexer files each operation under its words (`w.<word>.<yyyymmddHH>.<op_id>`, an empty value in
the operations index's bucket), so a search reads the keys of its words through the stream's subject
index (cost: the matches, not the history) and then the summaries of the newest few, instead of
every summary of the history. The words: the op id's random part, each symbol, the strategy, the
pool, the schedule and the description, lower-cased and split on anything but letters and digits
(`mlp_rsi_aapl` is filed under `mlp_rsi_aapl`'s words `mlp`, `rsi`, `aapl`). A query is split the
same way; every operation filed under all its words is a candidate, and the candidate's summary is
then checked with the list's own text filter (a piece of the op id, a symbol, the strategy or the
description, any case), so a search through the words keeps exactly the rows the scan keeps, less
those matched only by a piece of a word (`aap` for AAPL): whole words only. A query that is the start
of an op id (`training-20261201T13`, the whole id) walks only the hours that id's time falls in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from events import subjects
from events.bounds import MAX_SEARCH_TEXT, MAX_SEARCH_WORD, MAX_SEARCH_WORDS, MIN_SEARCH_WORD, SEARCH_TEXT_PATTERN
from events.messages import OpSummary

WORD_PREFIX = "w."
WORDS_MARK_KEY = "meta.words"  # present once every summary in the index has its words filed
_SPLIT = re.compile(r"[^a-z0-9]+")
_TEXT = re.compile(SEARCH_TEXT_PATTERN)
# The start of an op id: its domain, then as much of `-yyyymmddTHHMMSSffffff-hex` as was typed.
_ID_START = re.compile(r"^(?P<domain>[a-z]+)(?:-(?P<date>\d{0,8})(?:(?<=\d{8})t(?P<time>\d{0,12}))?"
                       r"(?:(?<=\d{12})-(?P<hex>[0-9a-f]{0,6}))?)?$")
# An id's time typed alone: its whole date at least (six digits could be an id's random part).
_TIME_START = re.compile(r"^(?P<date>\d{8})(?:t(?P<time>\d{0,12}))?$")


def check_text(text: str) -> str:
    """A query as typed (`ops list --text`, the page's `text`), stripped; ValueError with the line to
    show when it is empty, too long or holds a character no searched field has."""
    text = text.strip()
    if not 0 < len(text) <= MAX_SEARCH_TEXT:
        raise ValueError(f"the search text must be 1 to {MAX_SEARCH_TEXT} characters, got {len(text)}")
    if not _TEXT.match(text):
        raise ValueError("the search text may hold letters, digits, spaces and . _ - / : + ( ) only")
    return text


def words(text: str) -> list[str]:
    """The searchable words of a text: lower-cased, split on anything but letters and digits, each cut
    to MAX_SEARCH_WORD, shorter than MIN_SEARCH_WORD left out; in order, each once."""
    out: dict[str, None] = {}
    for w in _SPLIT.split(text.lower()):
        if len(w) >= MIN_SEARCH_WORD:
            out.setdefault(w[:MAX_SEARCH_WORD], None)
    return list(out)


def words_of(s: OpSummary) -> list[str]:
    """The words an operation is filed under (at most MAX_SEARCH_WORDS): its id's random part, its
    symbols, strategy (whole and in words), pool, schedule and description."""
    fields: list[str] = [s.op_id.rsplit("-", 1)[-1], *s.symbols, s.strategy, s.pool, s.schedule, s.description]
    out: dict[str, None] = {}
    for field in fields:
        for w in words(field):
            out.setdefault(w, None)
    return list(out)[:MAX_SEARCH_WORDS]


def word_key(word: str, op_id: str) -> str:
    return f"{WORD_PREFIX}{word}.{subjects.created_at_of(op_id):%Y%m%d%H}.{op_id}"


def word_filter(word: str, hour: str | None = None) -> str:
    """The key pattern of one word's operations (in one hour, yyyymmddHH, when given)."""
    return f"{WORD_PREFIX}{word}.{hour}.*" if hour else f"{WORD_PREFIX}{word}.>"


def word_keys(summaries: Iterable[OpSummary]) -> list[str]:
    return [word_key(w, s.op_id) for s in summaries for w in words_of(s)]


def op_of_word_key(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def id_start(text: str) -> tuple[str, str] | None:
    """(the id start lower-cased, the yyyymmddHH digits it fixes) when a query is the start of an op
    id of a known domain (its domain at least) or of an id's time (yyyymmdd at least), else None."""
    m = _ID_START.match(text.strip().lower()) or _TIME_START.match(text.strip().lower())
    if m is None or m.groupdict().get("domain", "") not in (*subjects.DOMAINS, ""):
        return None
    digits = (m["date"] or "") + (m["time"] or "")[:2]
    return text.strip().lower(), digits


def hour_fits(hour: str, digits: str) -> bool:
    """Whether an hour (yyyymmddHH) can hold ids whose time starts with `digits`."""
    n = min(len(hour), len(digits))
    return hour[:n] == digits[:n]
