"""The one symbol validator: what a symbol may look like (events.bounds.SYMBOL_PATTERN, the same rule
the message types check at decode) and how the data layer names it ("eur.usd" -> "EURUSD").

Commands, strategy files, the bar store, the model registry and the simulated gateway all call
`normalize_symbol`; nothing else parses a symbol. Kept free of pandas so light modules can import it.
"""

from __future__ import annotations

import re

from events.bounds import MAX_SYMBOL_LENGTH, NORMALIZED_SYMBOL, SYMBOL_PATTERN
from ktrdr.errors import ValidationError

_SYMBOL = re.compile(SYMBOL_PATTERN)
_NORMALISED = re.compile(rf"^{NORMALIZED_SYMBOL}$")


def normalize_symbol(value: object) -> str:
    """ "eur.usd", "EUR.USD", "EUR/USD", "EURUSD" -> "EURUSD"; " aapl " -> "AAPL".

    Up to MAX_SYMBOL_LENGTH letters and digits with at most one "." or "/" between them (surrounding
    spaces ignored); anything that could form a path (`..`, a leading separator, a
    backslash) is refused, never normalised into a symbol."""
    if not isinstance(value, str):
        raise ValidationError(f"symbol must be a string, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise ValidationError("symbol is empty", hint="e.g. AAPL or EURUSD")
    if not _SYMBOL.match(text):
        quoted = repr(value) if len(value) <= 40 else f"{value[:40]!r}... ({len(value)} characters)"
        raise ValidationError(f"invalid symbol {quoted}: up to {MAX_SYMBOL_LENGTH} letters and digits with at "
                              "most one . or / between them, e.g. AAPL, BRK.B or EUR.USD")
    return text.replace(".", "").replace("/", "").upper()


def is_normalized_symbol(value: object) -> bool:
    """Whether `value` is a symbol as normalize_symbol returns it (what model keys and object names hold)."""
    return isinstance(value, str) and bool(_NORMALISED.match(value))
