"""OpenTelemetry traces across every hop: the CLI's command, the orchestrator's operation, the work
item, the worker's run, each data segment, each IB request, each training epoch and backtest chunk.

Off by default, at no cost: while OTEL_TRACES_EXPORTER is unset (or `none`), or OTEL_SDK_DISABLED is
true, nothing of OpenTelemetry is imported, `span()` is one shared null context and no header is added.
On with the standard variables:
- OTEL_TRACES_EXPORTER: a comma-separated list of `otlp` (the OTLP/HTTP exporter: the `otel` extra;
  OTEL_EXPORTER_OTLP_ENDPOINT etc. as the SDK reads them), `console` (the SDK's, on stdout) and
  `ktrdr` (collector-free: each process appends its finished spans as JSON lines to
  KTRDR_HOME/traces/<service>-<pid>.jsonl, what `ktrdr ops show ID --trace` reads back as a tree);
- OTEL_SERVICE_NAME overrides the service name (the role by default), OTEL_RESOURCE_ATTRIBUTES adds to it.
The W3C trace context travels as the `traceparent` header of NATS messages (checked against
events.bounds.TRACEPARENT_PATTERN where it comes in: a malformed one starts a new trace, it never fails
the message) and in a training job's frame (the training child is a subprocess that inherits the
OTEL_* environment and writes its own spans)."""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from events.bounds import TRACEPARENT_LENGTH, TRACEPARENT_PATTERN
from ktrdr.config import TRACES_DIR_ENV, otel_env

HEADER = "traceparent"
OP_ID = "ktrdr.op_id"  # the attribute every span of an operation carries
ROLE = "ktrdr.role"  # the actor's role, on the spans an actor makes (actors may share a process: `python -m actors`)
TRACES_DIR = "traces"  # under KTRDR_HOME
ROTATED_SUFFIX = ".1"  # a full span file, kept once beside the one being written (JsonLinesExporter)
ENV_DIR = TRACES_DIR_ENV  # where the `ktrdr` exporter writes (the training child is told its parent's)
_VALID = re.compile(TRACEPARENT_PATTERN)
_NULL = contextlib.nullcontext()
_OP: contextvars.ContextVar[str | None] = contextvars.ContextVar("ktrdr_trace_op", default=None)


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment turns traces on."""
    env = otel_env() if env is None else env
    exporters = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()]
    return bool(exporters) and exporters != ["none"] and env.get("OTEL_SDK_DISABLED", "").lower() != "true"


class _State:
    on = False
    current: Any = None  # opentelemetry.trace.get_current_span
    last_span: Any = None
    last_traceparent: str | None = None
    provider: Any = None
    tracer: Any = None
    directory: Path | None = None


STATE = _State()
_lock = threading.Lock()


def enabled() -> bool:
    return STATE.on


def valid(traceparent: object) -> str | None:
    """The header's value when it is a W3C traceparent we read, else None (a new trace starts)."""
    if isinstance(traceparent, str) and len(traceparent) == TRACEPARENT_LENGTH and _VALID.match(traceparent):
        return traceparent
    return None


def setup(service: str, home: Path | None = None, *, extra: Sequence[Any] = (),
          env: Mapping[str, str] | None = None) -> bool:
    """Turn traces on for this process when the environment asks (or `extra` span exporters are given,
    as tests give the SDK's InMemorySpanExporter); once per process. Whether they are on."""
    env = otel_env() if env is None else env
    with _lock:
        if STATE.on or not (wanted(env) or extra):
            return STATE.on
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        provider = TracerProvider(resource=Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service}))
        names = [e.strip() for e in env.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip()] if wanted(env) else []
        for name in names:
            if name == "otlp":
                try:
                    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                except ImportError:
                    import logging

                    logging.getLogger(__name__).warning(
                        "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install 'ktrdr-nats[otel]'")
                    continue
                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            elif name == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
            elif name == "ktrdr":
                where = Path(env[ENV_DIR]) if env.get(ENV_DIR) else (home or Path("~/.ktrdr").expanduser()) / TRACES_DIR
                STATE.directory = where
                # Simple (synchronous) on purpose: spans are coarse (an operation, a segment, a request,
                # an epoch) and a line each; on disk the moment they end, also in a process killed later.
                provider.add_span_processor(SimpleSpanProcessor(cast(Any, JsonLinesExporter(where, service))))
        for exporter in extra:
            provider.add_span_processor(SimpleSpanProcessor(exporter))
        # Ours, not the API's global one (which can be set once per process): what is current travels
        # in the API's context either way, and a test can turn traces off again (shutdown()).
        from opentelemetry.trace import get_current_span

        STATE.provider, STATE.tracer, STATE.current = provider, provider.get_tracer("ktrdr"), get_current_span
        STATE.on = True
        return True


def shutdown() -> None:
    """Flush and turn traces off in this process (off again: nothing is imported, nothing added)."""
    with _lock:
        if STATE.on:
            with contextlib.suppress(Exception):
                STATE.provider.shutdown()
        STATE.on, STATE.provider, STATE.tracer, STATE.directory = False, None, None, None
        STATE.last_span = STATE.last_traceparent = None


def _context(traceparent: str | None) -> Any:
    if traceparent is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({HEADER: traceparent})


def span(name: str, op_id: str | None = None, *, parent: str | None = None,
         attrs: Mapping[str, Any] | None = None) -> Any:
    """A context manager: the current span `name` (a child of the current one, or of the `parent`
    traceparent when given) while tracing is on; a shared null context while off. `op_id` (else the
    enclosing span's) becomes its OP_ID attribute."""
    if not STATE.on:
        return _NULL
    return _span(name, op_id, valid(parent), dict(attrs or {}))


@contextlib.contextmanager
def _span(name: str, op_id: str | None, parent: str | None, attrs: dict[str, Any]) -> Iterator[Any]:
    op_id = op_id or _OP.get()  # a segment's, an epoch's: the operation whose span it runs in
    if op_id is not None:
        attrs[OP_ID] = op_id
    token = _OP.set(op_id)
    try:
        with STATE.tracer.start_as_current_span(name, context=_context(parent), attributes=attrs) as s:
            yield s
    finally:
        _OP.reset(token)


def start(name: str, op_id: str, *, parent: str | None = None, parent_span: Any = None,
          attrs: Mapping[str, Any] | None = None) -> Any:
    """A span that is not made current (ended by whoever holds it: the orchestrator's operation spans);
    None while off."""
    if not STATE.on:
        return None
    from opentelemetry import trace

    ctx = trace.set_span_in_context(parent_span) if parent_span is not None else _context(valid(parent))
    return STATE.tracer.start_span(name, context=ctx, attributes={**(attrs or {}), OP_ID: op_id})


def traceparent(of: Any = None) -> str | None:
    """The W3C traceparent of span `of` (the current span when None); None while off or outside a span."""
    if not STATE.on:
        return None
    s = of if of is not None else STATE.current()
    if s is STATE.last_span:  # a worker's progress events: the same run span, thousands of times
        return STATE.last_traceparent
    sc = s.get_span_context()
    tp = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}" if sc.is_valid else None
    STATE.last_span, STATE.last_traceparent = s, tp
    return tp


class OpSpans:
    """The orchestrator's operation spans (while tracing is on): each from the operation's creation to
    its end, a child of the command's traceparent or of its parent operation's span. Held in memory;
    the `created` event carries each one's traceparent, so an orchestrator that takes over continues
    them (resume), and one that stops leading ends its own (hand_over)."""

    MAX = 100_000  # spans held before the oldest are dropped (never ended: a bound, not a case)

    def __init__(self, role: str) -> None:
        self.role = role
        self.spans: dict[str, Any] = {}

    def start(self, op_id: str, domain: str, pool: str, parent_op_id: str | None, traceparent: str | None) -> None:
        if not STATE.on or op_id in self.spans:
            return
        parent = self.spans.get(parent_op_id) if parent_op_id else None
        s = start(f"operation {domain}", op_id, parent=traceparent, parent_span=parent,
                  attrs={ROLE: self.role, "ktrdr.domain": domain, "ktrdr.pool": pool})
        if s is not None:
            if len(self.spans) >= self.MAX:
                self.spans.clear()
            self.spans[op_id] = s

    def resume(self, op_id: str, domain: str, pool: str, parent_op_id: str | None, traceparent: str | None,
               by: str) -> None:
        """An operation this orchestrator took over (a failover, a restart) gets its span again: a
        continuation `operation <domain>` from now to the operation's end, a child of the span its
        creator started (the traceparent its `created` event carries; that span is lost if its process
        died: the trace keeps its id and every hop under it), else of its parent operation's span, else
        a new trace. `ktrdr.resumed_by` names the taking one."""
        if not STATE.on or op_id in self.spans:
            return
        parent = self.spans.get(parent_op_id) if parent_op_id and valid(traceparent) is None else None
        s = start(f"operation {domain}", op_id, parent=traceparent, parent_span=parent,
                  attrs={ROLE: self.role, "ktrdr.domain": domain, "ktrdr.pool": pool, "ktrdr.resumed_by": by})
        if s is not None:
            if len(self.spans) >= self.MAX:
                self.spans.clear()
            self.spans[op_id] = s

    def end(self, op_id: str, outcome: str) -> None:
        if (span := self.spans.pop(op_id, None)) is not None:
            span.set_attribute("ktrdr.outcome", outcome)
            span.end()

    def hand_over(self) -> None:
        """This orchestrator stops leading (a step-down, a clean stop): its open spans end now, with the
        outcome `handed_over`; the next leader continues each (resume)."""
        for op_id in list(self.spans):
            self.end(op_id, "handed_over")

    def headers(self, op_id: str) -> dict[str, str] | None:
        """The headers that carry the operation's trace onto its work item (None while off)."""
        return inject(None, self.spans.get(op_id))


def current(s: Any) -> Any:
    """A context manager making span `s` (started with `start`, not ended by this) the current one, so
    what is published inside carries its traceparent; a null context while off or for None."""
    if not STATE.on or s is None:
        return _NULL
    from opentelemetry import trace

    return trace.use_span(s, end_on_exit=False)


def inject(headers: dict[str, str] | None, of: Any = None) -> dict[str, str] | None:
    """`headers` with the traceparent of `of` (or the current span) added while tracing is on."""
    if not STATE.on:
        return headers
    tp = traceparent(of)
    if tp is None:
        return headers
    out = dict(headers or {})
    out[HEADER] = tp
    return out


def of_headers(headers: Mapping[str, str] | None) -> str | None:
    """The valid traceparent a message came with, or None."""
    if not STATE.on or not headers:
        return None
    return valid(headers.get(HEADER))


def flush(timeout_s: float = 2.0) -> None:
    """Export what the batching exporters (OTLP) still hold, waiting at most `timeout_s`."""
    if STATE.on:
        with contextlib.suppress(Exception):
            STATE.provider.force_flush(int(timeout_s * 1000))


class JsonLinesExporter:
    """The collector-free export: one JSON object a finished span, appended to this process's file.
    Bounded: a write that would take the file past `max_bytes` (events.bounds.MAX_TRACE_FILE_BYTES)
    first renames it to `<file>.1` (replacing the one before), so a process keeps at most two files
    of at most `max_bytes` each: its newest spans."""

    def __init__(self, directory: Path, service: str, max_bytes: int | None = None) -> None:
        from events.bounds import MAX_TRACE_FILE_BYTES

        self.directory = directory
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", service)[:40] or "process"
        self.path = directory / f"{safe}-{os.getpid()}.jsonl"
        self.rotated = self.path.with_name(self.path.name + ROTATED_SUFFIX)
        self.service = service
        self.max_bytes = MAX_TRACE_FILE_BYTES if max_bytes is None else max_bytes
        self._size: int | None = None  # the file's size, read once (a pid reused finds its old file)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        lines = []
        for s in spans:
            sc, parent = s.get_span_context(), s.parent
            lines.append(json.dumps({
                "trace_id": f"{sc.trace_id:032x}", "span_id": f"{sc.span_id:016x}",
                "parent_id": f"{parent.span_id:016x}" if parent is not None else None,
                "name": s.name, "service": s.resource.attributes.get("service.name", self.service),
                "start_ns": s.start_time, "end_ns": s.end_time, "status": s.status.status_code.name,
                "attributes": {k: v if isinstance(v, str | int | float | bool) else str(v)
                               for k, v in (s.attributes or {}).items()},
            }, separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode()
        try:
            with self._lock:
                self.directory.mkdir(parents=True, exist_ok=True)
                if self._size is None:
                    self._size = self.path.stat().st_size if self.path.exists() else 0
                if self._size and self._size + len(data) > self.max_bytes:
                    os.replace(self.path, self.rotated)
                    self._size = 0
                with open(self.path, "ab") as f:
                    f.write(data)
                self._size += len(data)
        except OSError:
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def read_spans(directory: Path) -> list[dict[str, Any]]:
    """Every span the `ktrdr` exporter wrote under `directory`, rotated files included (a torn last line
    is skipped; at most MAX_TRACE_FILE_BYTES of each file)."""
    from events.bounds import MAX_TRACE_FILE_BYTES

    spans: list[dict[str, Any]] = []
    if not directory.is_dir():
        return spans
    for path in sorted([*directory.glob("*.jsonl"), *directory.glob("*.jsonl" + ROTATED_SUFFIX)]):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read(MAX_TRACE_FILE_BYTES)
        except OSError:
            continue
        for line in text.splitlines():
            try:
                s = json.loads(line)
            except ValueError:
                continue
            if isinstance(s, dict) and isinstance(s.get("span_id"), str) and isinstance(s.get("trace_id"), str):
                spans.append(s)
    return spans


def trace_of(spans: Sequence[dict[str, Any]], op_id: str) -> list[dict[str, Any]]:
    """The spans of every trace that has a span of operation `op_id`, by start time."""
    traces = {s["trace_id"] for s in spans if (s.get("attributes") or {}).get(OP_ID) == op_id}
    return sorted((s for s in spans if s["trace_id"] in traces), key=lambda s: s.get("start_ns") or 0)


def tree_lines(spans: Sequence[dict[str, Any]]) -> list[str]:
    """The spans as an indented tree: name, service, duration, op id. Roots: spans without a parent, and
    a line for each parent that is not here (a span whose process died before it ended: an orchestrator
    killed mid-operation), its children under it."""
    ids = {s["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        children.setdefault(s.get("parent_id") or None, []).append(s)
    lines: list[str] = []

    def walk(s: dict[str, Any], depth: int, parent: dict[str, Any] | None, role: str | None) -> None:
        ms = ((s.get("end_ns") or 0) - (s.get("start_ns") or 0)) / 1e6
        attrs = s.get("attributes") or {}
        if parent is None or parent.get("service") != s.get("service"):
            role = None  # a role holds within one process (a segment's is its run's)
        role = attrs.get(ROLE) or role
        where = s.get("service") if role is None or role == s.get("service") else f"{s.get('service')}/{role}"
        op = f"  {attrs[OP_ID]}" if OP_ID in attrs else ""
        bad = "  ERROR" if s.get("status") == "ERROR" else ""
        lines.append(f"{'  ' * depth}{s.get('name')}  [{where}]  {ms:.1f} ms{op}{bad}")
        for c in children.get(s["span_id"], []):
            walk(c, depth + 1, s, role)

    for root in children.get(None, []):
        walk(root, 0, None, None)
    for parent_id in [p for p in children if p is not None and p not in ids]:
        lines.append(f"(span {parent_id} not recorded: its process ended before it did, or wrote elsewhere)")
        for s in children[parent_id]:
            walk(s, 1, None, None)
    return lines
