"""IB error codes -> the typed IbError subclasses (ktrdr.errors), so nothing above this layer parses
IB's text.

IB reuses code 162 for pacing violations, "no data" answers and server-side cancels; only the text
tells them apart. Messages name the symbol and say what a person can do about it.
"""

from __future__ import annotations

from ktrdr.errors import (
    DisconnectedError,
    IbError,
    NoDataError,
    PacingError,
    UnknownSymbolError,
)

# Informational codes: ib_async logs them as warnings and they never end a request.
INFO_CODES = frozenset({165, 366, 2104, 2106, 2107, 2108, 2119, 2158, 10167})
CONNECTIVITY_LOST = 1100
RESTORED_DATA_LOST = 1101
RESTORED_DATA_KEPT = 1102
CONNECTION_CODES = frozenset({502, 504, 1100, 1300, 2110})


def is_informational(code: int) -> bool:
    return code in INFO_CODES or 2100 <= code < 2200


def classify(code: int, text: str, *, symbol: str, what: str) -> IbError:
    """The typed error for IB error `code` / `text` that ended a request for `symbol` (`what` says
    which kind of request, e.g. "1h bars 2024-01-02..2024-01-09")."""
    low = text.lower()
    if code == 162 and "pacing violation" in low:
        return PacingError(
            f"IB refused {what} for {symbol}: pacing violation (error 162)",
            ib_code=code,
            hint="too many historical requests too fast; wait and retry (IB allows 60 per 10 minutes)",
        )
    if code == 162 and "no data" in low:
        return NoDataError(
            f"IB has no data for {symbol} ({what}): {text}",
            ib_code=code,
            hint="the range may be before the instrument's first available bar, or outside its sessions",
        )
    if code == 200:
        return UnknownSymbolError(
            f"IB does not know the symbol {symbol!r} (error 200: {text})",
            ib_code=code,
            hint="check the spelling; stocks are looked up on SMART in USD, forex pairs are written "
            "EURUSD or EUR.USD",
        )
    if code in CONNECTION_CODES:
        return DisconnectedError(
            f"IB connection problem during {what} for {symbol}: {text} (error {code})",
            ib_code=code,
            hint="the request can be retried once the gateway reconnects",
        )
    if code == 321:
        return IbError(f"IB rejected {what} for {symbol} as invalid: {text}", ib_code=code)
    return IbError(f"IB error {code} during {what} for {symbol}: {text}", ib_code=code)
