"""The limits on what a message may carry and the value types its fields use, each defined once.

Message Structs carry these as msgspec `Meta` constraints (checked at decode, listed in the JSON
Schema), and the domain checks that span several fields (the strategy's size in bytes, a dummy run's
total duration, a deadline after the command) read the same constants. Nothing else writes these
numbers: tests/test_bounds.py fails on a second definition.

`Timeframe` is the one bar-size type from the CLI to the IB client: a `StrEnum`, so on the wire and in
every f-string it is its canonical name ("1h"), and it compares equal to that string. It is made from
any spelling people type ("1H", "60m", "1 hour": `Timeframe("1H")`, and so by the decoder, which keeps
commands other clients sent with such spellings, and stored before, readable). Its nominal length is
part of what the name means; what IB and pandas call it lives in ktrdr/data/timeframes.py.
"""

from __future__ import annotations

import enum
from datetime import timedelta
from typing import Annotated

from msgspec import Meta

# --- symbols -------------------------------------------------------------------------------------
MAX_SYMBOL_LENGTH = 20  # letters and digits of a symbol (its separator aside): EURUSD as stored
# Letters and digits with at most one "." or "/" between them (AAPL, BRK.B, EUR.USD, EUR/USD): never
# "..", never a leading separator, so no spelling of a symbol can name another folder or object.
SYMBOL_PATTERN = rf"^(?=(?:[A-Za-z0-9][./]?){{1,{MAX_SYMBOL_LENGTH}}}$)[A-Za-z0-9]+(?:[./][A-Za-z0-9]+)?$"
NORMALIZED_SYMBOL = rf"[A-Z0-9]{{1,{MAX_SYMBOL_LENGTH}}}"  # as the data layer names it: EURUSD (unanchored)
MAX_SYMBOLS = 50  # per command and per strategy; a model key (SYMBOLS_TFS) holds at most this many
# A universe (`ktrdr data load --symbols/--symbols-file`): one parent, one data child per symbol.
MAX_UNIVERSE_SYMBOLS = 1000
MAX_UNIVERSE_PARALLEL = 50  # IB allows 50 simultaneous requests: more children at once only wait
DEFAULT_UNIVERSE_PARALLEL = 4  # children loading at once; the rest wait queued in the workflow
MAX_SYMBOLS_FILE_BYTES = 64 * 1024  # a symbols file: one symbol a line, # comments, blank lines
# A sweep (`ktrdr sweep`): one parent, one training child per variant of the parameter grid.
MAX_SWEEP_VARIANTS = 256  # the grid's product: more is a typo in a list, not a study
MAX_SWEEP_PARAMS = 16  # --param PATH=VALUES flags
MAX_SWEEP_PARALLEL = 64  # training children running at once (the others wait queued in the workflow)
DEFAULT_SWEEP_PARALLEL = 2
MAX_PARAM_PATH = 200  # model.training.learning_rate: dotted keys, list indexes as numbers
PARAM_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.([A-Za-z_][A-Za-z0-9_]{0,63}|[0-9]{1,4}))*$"

# --- names that become subject tokens, consumer names and KV keys ---------------------------------
MAX_TOKEN_LENGTH = 32
TOKEN_PATTERN = rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_TOKEN_LENGTH - 1}}}$"  # pools, roles, actor-id parts

# --- free-text search (`ops list --text`, the page's search box) ---------------------------------
MAX_SEARCH_TEXT = 64  # characters of a query
# What a query may hold: letters, digits, spaces and the separators op ids, symbols, strategies and
# descriptions use; anything else (quotes, wildcards, control characters) is refused at the boundary.
SEARCH_TEXT_PATTERN = r"^[A-Za-z0-9_ .:/+()-]+$"
# The words an operation is found by (ktrdr.ops.search.words_of): lower-case letters and digits, cut to
# MAX_SEARCH_WORD, at least MIN_SEARCH_WORD long, at most MAX_SEARCH_WORDS per operation (one index key each).
MIN_SEARCH_WORD = 2
MAX_SEARCH_WORD = 32
MAX_SEARCH_WORDS = 24

# --- commands ------------------------------------------------------------------------------------
MAX_LABEL = 512  # requested_by, strategy_path: labels for people, never paths
MAX_STRATEGY_BYTES = 256 * 1024  # a strategy file's text, in UTF-8 bytes
MAX_EPOCHS = 100_000
MAX_DUMMY_ITERATIONS = 10_000
MAX_DUMMY_INTERVAL_S = 60.0
MAX_DUMMY_DURATION_S = 24 * 3600.0  # iterations x interval
MAX_DEADLINE = timedelta(days=30)  # a command's deadline: its timeout_s at most, or (older clients) after its ts
MAX_REASON = 2000  # a rejection or failure reason is cut to this many characters
# The most bytes a CancelOperation can take on the wire: its two free-text fields at their longest, each
# character at its longest JSON form (a control character is written \u00XX: 6 bytes), plus the fixed
# fields (type, op id, ts, reason code, actor) and headers. What the OPS_CANCELS stream takes per message.
MAX_CANCEL_BYTES = 6 * (MAX_REASON + 2 * MAX_LABEL) + 2048

# --- backtests -----------------------------------------------------------------------------------
MAX_MODEL_REF = 300  # `strategy/KEY_vN`: the name rules of ktrdr.training.registry, checked by its parser
MODEL_REF_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_./-]*$"  # what those names are made of (no spaces, no `..` root)
MAX_BACKTEST_CAPITAL = 1e12
MAX_COMMISSION = 0.05  # of the traded notional, per fill: above 5% it is a typo (0.1 meant 0.1%?), not a broker
MAX_SLIPPAGE_BPS = 500.0  # 5% of the price, per fill
DEFAULT_BACKTEST_CAPITAL = 100_000.0
DEFAULT_COMMISSION = 0.001
DEFAULT_SLIPPAGE_BPS = 1.0


# --- schedules (issue 22) -----------------------------------------------------------------------
# A schedule's name becomes a subject token (sched.def.<name>) and part of its operations' ids.
MAX_SCHEDULE_NAME = 32
SCHEDULE_NAME_PATTERN = rf"^[a-z0-9][a-z0-9_-]{{0,{MAX_SCHEDULE_NAME - 1}}}$"
MAX_SCHEDULE_SPEC = 120  # a 6-field cron or `@every <duration>`, as the server parses it
MAX_SCHEDULES = 200  # schedules one stack keeps (SCHEDULES holds one definition each)
SCHEDULE_MIN_EVERY_S = 1.0  # nats-server fires `@every` at most once a second
SCHEDULE_MAX_EVERY_S = 366 * 86400.0
MAX_TIME_ZONE = 64  # an IANA zone name (America/Argentina/ComodRivadavia is 32)

# --- retries (issue 22) -------------------------------------------------------------------------
# Retry policies (item 2): Temporal's defaults for the waits (1 s, x2.0, at most 100 s); the attempts
# per domain (a command's --retries overrides them, at most MAX_RETRIES); only a failure whose error
# code is in RETRYABLE_CODES is retried (the IB gateway away, NATS unreachable for a step of the
# work), never a validation
# error nor a cancel. Every attempt is also a delivery of the work item: KTRDR_MAX_DELIVER caps them.
RETRY_INITIAL_S = 1.0
RETRY_BACKOFF = 2.0
RETRY_MAX_INTERVAL_S = 100.0
MAX_RETRY_INTERVAL_S = 3600.0  # the most --retry-max-interval may say
MAX_RETRIES = 20
DEFAULT_RETRIES: dict[str, int] = {"data": 4, "training": 2, "backtest": 2, "dummy": 0}
RETRYABLE_CODES: tuple[str, ...] = ("disconnected", "nats_unavailable")
# An operation id named in another operation's events (`retry_of`, `retried_by`): the shape
# events.subjects.new_op_id makes, checked at decode.
OP_ID_PATTERN = r"^[a-z]+-\d{8}T\d{12}-[0-9a-f]{6}$"
SCHEDULE_HISTORY = 50  # firings (and their records) each schedule keeps in SCHEDULES

# --- priorities (issue 22, item 4) -----------------------------------------------------------------
# A worker takes high before normal before low, first come first served within one. No starvation: a
# level a worker has seen waiting (items queued, none taken by it) for PRIORITY_AGING_S is taken as if
# it were one level higher, for 2 x PRIORITY_AGING_S as two: a low item waits at most
# 2 x PRIORITY_AGING_S (+ one running item) however many high ones keep coming. KTRDR_PRIORITY_AGING
# overrides it (ktrdr.config).
PRIORITIES: tuple[str, ...] = ("high", "normal", "low")  # in the order workers take them
DEFAULT_PRIORITY = "normal"
PRIORITY_AGING_S = 60.0

# --- timeframes ----------------------------------------------------------------------------------
class Timeframe(enum.StrEnum):
    """A bar size, written by its canonical name; other spellings ("1H", "60m", "1 hour") are read as it."""

    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    M30 = "30m"
    H1 = "1h"
    H4 = "4h"
    D1 = "1d"
    W1 = "1w"

    @classmethod
    def _missing_(cls, value: object) -> Timeframe | None:
        if not isinstance(value, str) or len(value) > 16:
            return None
        key = value.strip().lower().replace(" ", "")
        key = _ALIASES.get(key, key)
        return next((tf for tf in cls if tf.value == key), None)

    @property
    def seconds(self) -> int:
        """The nominal bar length."""
        return int(self.value[:-1]) * _UNIT_SECONDS[self.value[-1]]

    @property
    def delta(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    @property
    def is_intraday(self) -> bool:
        return self.seconds < _UNIT_SECONDS["d"]


_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Spellings people type (IB's bar sizes among them, spaces dropped), lower-cased.
_ALIASES = {
    "1min": "1m", "5min": "5m", "5mins": "5m", "15min": "15m", "15mins": "15m", "30min": "30m", "30mins": "30m",
    "60m": "1h", "1hour": "1h", "4hour": "4h", "4hours": "4h", "240m": "4h",
    "d": "1d", "1day": "1d", "daily": "1d", "w": "1w", "1week": "1w", "weekly": "1w",
}
MAX_TIMEFRAMES = len(Timeframe)  # a strategy or command names each timeframe at most once

# --- field types, as the Structs declare them ----------------------------------------------------
Symbol = Annotated[str, Meta(pattern=SYMBOL_PATTERN, description=f"a symbol: up to {MAX_SYMBOL_LENGTH} letters and "
                             "digits with at most one . or / between them, e.g. AAPL, BRK.B or EUR.USD")]
Symbols = Annotated[list[Symbol], Meta(max_length=MAX_SYMBOLS)]
Timeframes = Annotated[list[Timeframe], Meta(max_length=MAX_TIMEFRAMES)]
UniverseSymbols = Annotated[list[Symbol], Meta(max_length=MAX_UNIVERSE_SYMBOLS)]
UniverseParallel = Annotated[int, Meta(ge=1, le=MAX_UNIVERSE_PARALLEL)]
SweepParallel = Annotated[int, Meta(ge=1, le=MAX_SWEEP_PARALLEL)]
ParamPath = Annotated[str, Meta(min_length=1, max_length=MAX_PARAM_PATH, pattern=PARAM_PATH_PATTERN,
                                description="a strategy field: dotted keys, e.g. model.training.learning_rate")]
Token = Annotated[str, Meta(pattern=TOKEN_PATTERN, description="a pool name (lower-case letters, digits, - and _, "
                            f"at most {MAX_TOKEN_LENGTH})")]
Label = Annotated[str, Meta(max_length=MAX_LABEL)]
Reason = Annotated[str, Meta(max_length=MAX_REASON)]  # a cancel's words, as a person gave them
StrategyText = Annotated[str, Meta(max_length=MAX_STRATEGY_BYTES)]  # characters; bytes are checked too
Epochs = Annotated[int, Meta(ge=1, le=MAX_EPOCHS)]
DummyIterations = Annotated[int, Meta(ge=1, le=MAX_DUMMY_ITERATIONS)]
DummyInterval = Annotated[float, Meta(ge=0.0, le=MAX_DUMMY_INTERVAL_S)]
ModelRef = Annotated[str, Meta(min_length=1, max_length=MAX_MODEL_REF, pattern=MODEL_REF_PATTERN,
                               description="a model: strategy, strategy/SYMBOLS_tf or strategy/SYMBOLS_tf_vN")]
Capital = Annotated[float, Meta(gt=0.0, le=MAX_BACKTEST_CAPITAL)]
Commission = Annotated[float, Meta(ge=0.0, le=MAX_COMMISSION, description="fraction of the traded notional")]
SlippageBps = Annotated[float, Meta(ge=0.0, le=MAX_SLIPPAGE_BPS, description="basis points of the fill price")]
ScheduleName = Annotated[str, Meta(pattern=SCHEDULE_NAME_PATTERN, description="a schedule's name (lower-case "
                                   f"letters, digits, - and _, at most {MAX_SCHEDULE_NAME})")]
ScheduleSpec = Annotated[str, Meta(min_length=1, max_length=MAX_SCHEDULE_SPEC)]
TimeZoneName = Annotated[str, Meta(max_length=MAX_TIME_ZONE)]
OpIdRef = Annotated[str, Meta(max_length=64, pattern=OP_ID_PATTERN, description="an operation id")]
Retries = Annotated[int, Meta(ge=0, le=MAX_RETRIES, description="attempts after the first, on a retryable failure")]
RetryInterval = Annotated[float, Meta(ge=RETRY_INITIAL_S, le=MAX_RETRY_INTERVAL_S,
                                      description="the longest wait between two attempts, seconds")]
# A command's deadline as a duration: the orchestrator adds it to its own clock when it accepts the
# command, so a client's clock never moves it (issue 18, F13).
TimeoutSeconds = Annotated[float, Meta(gt=0.0, le=MAX_DEADLINE.total_seconds())]

# The holder proof (events/proof.py): how often a holder signs, how soon a signed event follows an
# unsigned one, how many unconfirmed events a reader keeps per operation, and how many a replay lets
# wait behind one deferred signature.
# Every event of a stream up to 2,000 events/s is signed (none waits for a seal): the backbone
# bench's paced progress stream is that fast, and at one signature per ms its p99 was 1.8-3.3 ms
# against 1.3-1.8 ms at this rate (python -m bench backbone, same run). A signature costs its
# publisher ~33 us, a verify ~80 us to each live reader.
SIGN_INTERVAL_S = 0.0005  # on average, per operation
SIGN_BURST = 4  # signatures a quiet operation has in hand (a slow stream: every event signed)
SEAL_S = 0.0002  # after a signature is due again: the seal of an unsigned progress nothing followed
MAX_UNCONFIRMED = 8192
CONFIRM_BATCH = 512
LEASE_REQUEST_TIMEOUT_S = 2.0  # a worker's lease request to the orchestrator
# An ib actor tells the caller of each request it serves that it is still at it: a keepalive (a
# header-only reply) as it takes the request and every IB_KEEPALIVE_S until it answers, pacing waits
# included. A caller that hears nothing from it for IB_SILENCE_S fails the request as retryable
# (`disconnected`: "ib actor ... stopped answering"), so a paused, hung or cut-off ib actor costs a few
# seconds, not the 120 s idle timeout; a long request that keeps its keepalives coming is never cut.
IB_KEEPALIVE_S = 1.0
IB_SILENCE_S = 5.0

# BARS partitions (ktrdr.data.partitions): a series' manifest lists at most MAX_PARTITIONS partitions
# (1m bars by month: 1,666 years), is at most MAX_MANIFEST_BYTES, and names each partition
# `<key>.<generation>.<8 hex>` under its series.
MAX_PARTITIONS = 20_000
MAX_MANIFEST_BYTES = 4 << 20
MAX_GENERATION_DIGITS = 12
PARTITION_KEY_PATTERN = r"(all|[0-9]{4}|[0-9]{4}-[0-9]{2})"
PARTITION_TAIL_PATTERN = rf"^{PARTITION_KEY_PATTERN}\.([0-9]{{1,{MAX_GENERATION_DIGITS}}})\.([0-9a-f]{{8}})$"
# Each manifest entry may carry its partition's coverage: the runs of consecutive bars it holds (first,
# last bar start in epoch seconds), so a load plans its gaps from the manifest without reading the
# partition. At most MAX_RUNS_PER_PARTITION runs (a month of 1m bars on NYSE hours is ~21, a year of 1h
# ~252); a partition more fragmented than that is listed without runs and read when a plan needs it.
MAX_RUNS_PER_PARTITION = 1024

# Traces (ktrdr/tracing.py): the W3C trace context a command, a work item, an IB request and a training
# job carry (`traceparent`, version 00: trace id, parent span id, flags); anything else is dropped.
TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
TRACEPARENT_LENGTH = 55
# One process's span file (the `ktrdr` trace exporter): rotated to <file>.1 (one kept, the one before
# replaced) before a write would pass it; `ops show --trace` reads at most this much of each.
MAX_TRACE_FILE_BYTES = 64 * 1024 * 1024
