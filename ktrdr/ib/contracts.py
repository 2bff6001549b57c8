"""Symbols -> IB contracts, and IB contract details -> ContractInfo (events.messages).

Stocks are looked up as Stock(symbol, "SMART", "USD"); forex pairs ("EURUSD", "EUR.USD") as
Forex(pair) on IDEALPRO. The known universe (ktrdr.data.calendar) decides the kind; unknown
six-letter symbols made of two currency codes are taken as forex.
"""

from __future__ import annotations

from ib_async import Contract, ContractDetails, Forex, Stock

from events.messages import ContractInfo
from ktrdr.data.calendar import Instrument, lookup, normalize_symbol

CURRENCIES = frozenset(
    "USD EUR GBP JPY CHF AUD NZD CAD SEK NOK DKK HKD SGD CNH MXN ZAR PLN CZK HUF TRY ILS KRW".split()
)


def instrument_for(symbol: str, universe: dict[str, Instrument] | None = None) -> Instrument:
    """The instrument a user's symbol designates: the universe entry, else a guess from its shape."""
    inst = lookup(symbol, universe)
    if inst is not None:
        return inst
    s = normalize_symbol(symbol)
    if len(s) == 6 and s[:3] in CURRENCIES and s[3:] in CURRENCIES:
        pair = f"{s[:3]}.{s[3:]}"
        return Instrument(s, "forex", "IDEALPRO", s[3:], 0, "America/New_York", "MIDPOINT", pair, pair)
    return Instrument(s, "stock", "SMART", "USD", 0, "America/New_York", "TRADES", s, "")


def contract_for(inst: Instrument) -> Contract:
    """An unqualified ib_async contract for the instrument (conId filled in when already known)."""
    if inst.kind == "forex":
        c: Contract = Forex(inst.symbol, exchange=inst.exchange or "IDEALPRO")
    else:
        c = Stock(inst.symbol, inst.exchange or "SMART", inst.currency or "USD")
    return c


def pick_details(inst: Instrument, details: list[ContractDetails]) -> ContractDetails | None:
    """The one matching contract among IB's answers (IB may list several listings of a symbol)."""
    matching = [d for d in details if d.contract is not None and d.contract.secType == inst.sec_type]
    if not matching:
        return None
    if inst.con_id:
        for d in matching:
            if d.contract is not None and d.contract.conId == inst.con_id:
                return d
    return matching[0]


def contract_info(inst: Instrument, details: ContractDetails) -> ContractInfo:
    c = details.contract
    assert c is not None
    return ContractInfo(
        symbol=inst.symbol,
        sec_type=c.secType,
        exchange=inst.exchange or c.exchange,
        currency=c.currency,
        con_id=c.conId,
        what_to_show=inst.what_to_show,
        trading_hours=details.tradingHours,
        time_zone=details.timeZoneId,
    )


def qualified_contract(inst: Instrument, details: ContractDetails) -> Contract:
    """The contract to send in data requests: IB's answer, with SMART kept for stocks (overwriting it
    with the primary listing would route every request to one exchange)."""
    c = details.contract
    assert c is not None
    q = Contract(
        secType=c.secType,
        conId=c.conId,
        symbol=c.symbol,
        exchange=inst.exchange or c.exchange,
        primaryExchange=c.primaryExchange,
        currency=c.currency,
        localSymbol=c.localSymbol,
        tradingClass=c.tradingClass,
    )
    return q
