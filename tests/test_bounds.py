"""Every bound and name is defined once: the limits in events/bounds.py, the roles in events/roles.py,
the Nats-Msg-Id formats in events/subjects.py. The source is parsed for a second definition (an
assignment to a bound's name, a number or pattern it replaced, a role or message-id literal) anywhere
else in the product; the message unions are written-out aliases of the tuples they derive from; and a
timeframe meets one type from the CLI's parsing to IbClient.bars."""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

import pytest

from events import bounds, messages
from events.bounds import Timeframe

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("actors", "events", "hosts", "ktrdr")
HOMES = {"events/bounds.py", "events/roles.py", "events/subjects.py"}
# Rewritten on another branch of the same change (the operation's home): the merge wires them to the
# builders here (subjects.work_msg_id, created_msg_id, roles.is_actor_of, bounds.MAX_REASON) and
# drops them from this set.
PENDING: set[str] = set()

BOUND_NAMES = {n for n in vars(bounds) if n.isupper()}
# What the bounds replaced, as it was written: the 256 KiB strategy limit, the symbol and token patterns.
MAGIC_PRODUCTS = {256 * 1024}
MAGIC_TEXT = re.compile(r"\{1,12\}|\{1,20\}|\{0,31\}|\{1,32\}")
MSG_ID_PREFIXES = ("cmd-", "work-")
MSG_ID_SUFFIXES = (".created", ".cancel.parent", ".cancel.deadline", ".terminal")
ROLE_LITERALS = {"job-manager", "orchestrator", "orchestrator-"}


def _files() -> list[tuple[str, ast.AST]]:
    out = []
    for pkg in PRODUCT:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if rel not in HOMES and rel not in PENDING:
                out.append((rel, ast.parse(p.read_text())))
    return out


def _product(node: ast.BinOp) -> int | None:
    """The value of `a * b` when both are written-out integers (`256 * 1024`)."""
    a, b = node.left, node.right
    if isinstance(a, ast.BinOp) and isinstance(a.op, ast.Mult):
        left = _product(a)
    else:
        left = a.value if isinstance(a, ast.Constant) and type(a.value) is int else None
    right = b.value if isinstance(b, ast.Constant) and type(b.value) is int else None
    return None if left is None or right is None else left * right


def _second_definitions(rel: str, tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        found += [f"{rel}:{node.lineno} defines {t.id}" for t in targets
                  if isinstance(t, ast.Name) and t.id in BOUND_NAMES]
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and _product(node) in MAGIC_PRODUCTS:
            found.append(f"{rel}:{node.lineno} writes {ast.unparse(node)}")
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and node.value in MAGIC_PRODUCTS:
            found.append(f"{rel}:{node.lineno} writes {node.value}")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and MAGIC_TEXT.search(node.value):
            found.append(f"{rel}:{node.lineno} writes the pattern {node.value!r}")
    return found


def _names(rel: str, tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ROLE_LITERALS:
            found.append(f"{rel}:{node.lineno} names the role {node.value!r}")
        if isinstance(node, ast.JoinedStr) and node.values:
            first, last = node.values[0], node.values[-1]
            if isinstance(first, ast.Constant) and str(first.value) in MSG_ID_PREFIXES:
                found.append(f"{rel}:{node.lineno} builds a message id {ast.unparse(node)}")
            if isinstance(last, ast.Constant) and str(last.value).endswith(MSG_ID_SUFFIXES):
                found.append(f"{rel}:{node.lineno} builds a message id {ast.unparse(node)}")
    return found


def test_every_bound_is_defined_once():
    assert BOUND_NAMES >= {"MAX_SYMBOLS", "MAX_SYMBOL_LENGTH", "MAX_EPOCHS", "MAX_STRATEGY_BYTES", "MAX_TIMEFRAMES",
                           "MAX_LABEL", "MAX_DEADLINE", "MAX_DUMMY_ITERATIONS", "MAX_REASON", "MAX_TOKEN_LENGTH"}
    assert [hit for rel, tree in _files() for hit in _second_definitions(rel, tree)] == []


def test_roles_and_message_ids_come_from_events():
    assert [hit for rel, tree in _files() for hit in _names(rel, tree)] == []


def test_the_checks_above_can_fail():
    tree = ast.parse('MAX_EPOCHS = 5\nLIMIT = 256 * 1024\nR = r"^[A-Z0-9]{1,20}$"\n'
                     'role = "job-manager"\nmid = f"work-{op}"\nother = f"{op}.cancel.parent"\n')
    assert len(_second_definitions("x.py", tree)) == 3 and len(_names("x.py", tree)) == 3


def test_no_type_ignore_for_the_message_unions():
    hits = [rel for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")
            if (rel := p.relative_to(ROOT).as_posix()) not in PENDING and "type: ignore[valid-type]" in p.read_text()]
    assert hits == []


@pytest.mark.parametrize(("alias", "members"), [
    (messages.AnyCommand, messages.COMMANDS),
    (messages.AnyEvent, messages.EVENTS),
    (messages.AnyIbRequest, messages.IB_REQUESTS),
])
def test_the_unions_are_the_tuples_they_derive_from(alias, members):
    assert typing.get_args(alias) == members


def _hint(obj: typing.Any, name: str) -> object:
    """The type annotated on `name` (a Struct field, a parameter, "return"), resolved in its module."""
    if isinstance(obj, type):
        return typing.get_type_hints(obj)[name]
    annotation = obj.__annotations__[name]
    return eval(annotation, obj.__globals__) if isinstance(annotation, str) else annotation


def test_a_timeframe_meets_one_type_from_the_cli_to_ib_client_bars():
    from ktrdr.commands import check_timeframe
    from ktrdr.data.planning import plan_segments
    from ktrdr.data.timeframes import parse_timeframe
    from ktrdr.ib.client import IbClient
    from ktrdr.training.job import CheckedJob
    from ktrdr.transport.ib import IbRequester

    assert check_timeframe("60m") is parse_timeframe("1H") is Timeframe.H1  # what the CLI does with -t
    assert _hint(check_timeframe, "return") is Timeframe
    assert _hint(messages.LoadData, "timeframe") is Timeframe
    assert _hint(messages.StartTraining, "timeframes") == list[Timeframe]
    assert _hint(plan_segments, "tf") is Timeframe
    assert _hint(IbRequester.bars, "timeframe") is Timeframe
    assert _hint(messages.IbBarsRequest, "timeframe") is Timeframe
    assert _hint(IbClient.bars, "timeframe") is Timeframe
    assert _hint(CheckedJob, "timeframes") == list[Timeframe]


@pytest.mark.parametrize("raw", ["../../etc", "AAPL/..", "..\\AAPL", "/AAPL", "A" * 21, "AA PL", "EUR-USD", "AAPL*",
                                 ""])
def test_one_symbol_rule_for_the_wire_the_commands_and_the_data_layer(raw):
    from events.codec import DecodeError, decode_command
    from ktrdr.commands import check_symbol
    from ktrdr.data.symbols import normalize_symbol
    from ktrdr.errors import ValidationError

    with pytest.raises(DecodeError):
        decode_command(messages_json("LoadData", symbol=raw))
    for check in (normalize_symbol, check_symbol):
        with pytest.raises(ValidationError):
            check(raw)


@pytest.mark.parametrize(("raw", "symbol"), [("eur.usd", "EURUSD"), ("EUR/USD", "EURUSD"), ("BRK.B", "BRKB"),
                                             ("aapl", "AAPL"), ("A" * 20, "A" * 20),
                                             ("ABCDEFGHIJKL.ABCDEFGH", "ABCDEFGHIJKLABCDEFGH")])
def test_every_spelling_the_wire_takes_normalises_the_same_way(raw, symbol):
    from events.codec import decode_command
    from ktrdr.commands import check_symbol
    from ktrdr.data.symbols import is_normalized_symbol, normalize_symbol

    assert decode_command(messages_json("LoadData", symbol=raw)).symbol == raw
    assert normalize_symbol(raw) == check_symbol(raw) == symbol and is_normalized_symbol(symbol)


def messages_json(tag: str, **fields: object) -> bytes:
    import json

    from events import subjects

    domain = messages.COMMAND_FOR_DOMAIN
    cls = next(c for c in domain.values() if c.__name__ == tag)
    return json.dumps({"type": tag, "op_id": subjects.new_op_id(cls.domain), **fields}).encode()
