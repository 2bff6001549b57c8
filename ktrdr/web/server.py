"""The operations page's HTTP side (aiohttp): two HTML pages, their static files, two server-sent-event
streams, the cancel POST, the list's filtered pages from the operations index (/ops.json, filters
checked as `ktrdr ops list` checks its options) and an operation's events as a JSON download.
Everything a browser sends is checked here, once:

- operation ids match events.subjects.is_op_id (400 otherwise, 404 when nothing is stored for one);
- static files come from a fixed list read from the package at start; no request names a path;
- request bodies are capped (client_max_size) and the live streams are capped (max_streams), and
  per client (MAX_STREAMS_PER_CLIENT: a session, or else a peer address) below that;
- the Host header must name this server when it listens on loopback (DNS rebinding);
- the pages carry no secret (anyone who can open a socket here reads them, issue 18, F15): the way
  in is `/login?code=...`, a one-time code `ktrdr web` signs with the secret in `<run_dir>/web.secret`
  (0600), exchanged for an HttpOnly, SameSite=Strict session cookie; without it a page is read-only;
- the cancel POST needs that session cookie, a header a cross-site form cannot send (a cross-site
  fetch cannot set it without a CORS preflight we never answer), and a same-origin Origin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
import time
from importlib import resources
from typing import Any

from aiohttp import web

from events.subjects import is_op_id, is_token
from ktrdr.config import Settings
from ktrdr.config import settings as default_settings
from ktrdr.ops.index import MAX_PAGE, MAX_TEXT, Filters, before_key, parse_when
from ktrdr.ops.search import check_text
from ktrdr.runfiles import web_url_file
from ktrdr.web import (
    DEFAULT_HOST,
    LOGIN_PATH,
    MAX_STREAMS,
    READY_PREFIX,
    SESSION_COOKIE,
    check_login_code,
    default_port,
    make_login_code,
    web_secret_file,
    write_secret,
)
from ktrdr.web.hub import Hub, Stream, TooManyStreams

log = logging.getLogger("ktrdr.web")

STATIC = {  # name -> content type: the only files served
    "style.css": "text/css; charset=utf-8",
    "common.js": "text/javascript; charset=utf-8",
    "list.js": "text/javascript; charset=utf-8",
    "op.js": "text/javascript; charset=utf-8",
    "compare.js": "text/javascript; charset=utf-8",
}
CANCEL_HEADER = "X-KTRDR-Cancel"  # a custom header: a cross-site form cannot send it, a fetch only after a preflight
MAX_SESSIONS = 256  # logged-in browsers remembered (the oldest is forgotten first)
KEEPALIVE_S = 15.0  # a comment line on an idle stream, so proxies and the browser keep it open
MAX_BODY = 4096  # nothing we accept has a body; this bounds what anyone can make us read
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
CONF: web.AppKey[dict[str, Any]] = web.AppKey("conf", dict)


def _read(name: str) -> bytes:
    return (resources.files("ktrdr.web") / "static" / name).read_bytes()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _pages(text: bytes) -> dict[bool, bytes]:
    """The page as a session sees it (it may cancel) and as anyone else does (read-only)."""
    return {can: text.replace(b"__KTRDR_CAN_CANCEL__", b"1" if can else b"0") for can in (True, False)}


def _session(request: web.Request) -> str | None:
    """The request's session, when its cookie names one this server gave out."""
    sid = request.cookies.get(SESSION_COOKIE, "")
    return sid if sid and sid in request.app[CONF]["sessions"] else None


def _client(request: web.Request) -> str:
    """Whom a live stream is counted against: its session, else the address it comes from."""
    sid = _session(request)
    return f"session:{sid}" if sid else f"peer:{request.remote}"


def _error_page(status: int, title: str, detail: str) -> web.Response:
    body = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<link rel=stylesheet href=/static/style.css></head><body><header><a class=brand href=/>KTRDR</a> "
            f"operations</header><main><h1>{html.escape(title)}</h1><p>{html.escape(detail)}</p>"
            f"<p><a href=/>all operations</a></p></main></body></html>")
    return web.Response(status=status, text=body, content_type="text/html")


def _op_id(request: web.Request) -> str:
    op_id = request.match_info["op_id"]
    if len(op_id) > 64 or not is_op_id(op_id):
        raise _HTTPError(_error_page(400, "Not an operation id",
                                     "Operation ids look like dummy-20261128T174900123456-3f9a1c."))
    return op_id


class _HTTPError(Exception):
    def __init__(self, response: web.Response) -> None:
        self.response = response


# ------------------------------------------------------------------------------------------ middleware
@web.middleware
async def _guard(request: web.Request, handler: Any) -> web.StreamResponse:
    allowed: set[str] | None = request.app[CONF]["allowed_hosts"]
    if allowed is not None and request.host.lower() not in allowed:
        return web.Response(status=421, text="this server does not answer for that Host\n")
    try:
        return await handler(request)
    except _HTTPError as err:
        return err.response
    except web.HTTPNotFound:
        return _error_page(404, "Not found", "There is no such page here.")
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405, text="method not allowed\n")
    except web.HTTPRequestEntityTooLarge:
        return web.Response(status=413, text="request too large\n")
    except ConnectionError:
        return _error_page(503, "Not connected to NATS", "The server is reconnecting; reload in a moment.")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")


# ------------------------------------------------------------------------------------------ handlers
async def list_page(request: web.Request) -> web.Response:
    conf = request.app[CONF]
    return web.Response(body=conf["list_html"][_session(request) is not None], content_type="text/html",
                        charset="utf-8")


async def login(request: web.Request) -> web.Response:
    """Exchange a one-time code (`ktrdr web`) for a session cookie, then show the list."""
    conf = request.app[CONF]
    found = check_login_code(conf["secret"], request.query.get("code", ""))
    used: dict[str, float] = conf["used_codes"]
    now = time.time()
    for nonce in [n for n, exp in used.items() if exp < now]:  # expired codes are refused anyway
        del used[nonce]
    if found is None or found[0] in used:
        return _error_page(403, "This link does not open the page any more",
                           "A login link works once, for a few minutes: run `ktrdr web` for a new one.")
    used[found[0]] = found[1]
    sessions: dict[str, float] = conf["sessions"]
    while len(sessions) >= MAX_SESSIONS:
        del sessions[next(iter(sessions))]
    sid = secrets.token_urlsafe(32)
    sessions[sid] = now
    resp = web.Response(status=303, headers={"Location": "/"})
    resp.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="Strict", path="/")
    return resp


async def op_page(request: web.Request) -> web.Response:
    op_id = _op_id(request)
    if not await request.app[HUB].exists(op_id):
        return _error_page(404, "Unknown operation", f"No operation {op_id} is stored.")
    return web.Response(body=request.app[CONF]["op_html"][_session(request) is not None], content_type="text/html",
                        charset="utf-8")


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    files: dict[str, bytes] = request.app[CONF]["static"]
    if name not in files:  # a fixed list: nothing from the request reaches the filesystem
        raise web.HTTPNotFound()
    return web.Response(body=files[name], headers={"Content-Type": STATIC[name], "Cache-Control": "no-cache"})


async def list_events(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    if hub.client is None:
        raise ConnectionError("not connected")
    try:
        async with hub.list_stream(_client(request)) as stream:
            return await _pump(request, stream)
    except TooManyStreams as exc:
        return _too_many(exc)


async def op_events(request: web.Request) -> web.StreamResponse:
    op_id = _op_id(request)
    hub = request.app[HUB]
    if not await hub.exists(op_id):
        return web.Response(status=404, text=f"no operation {op_id} is stored\n")
    try:
        async with hub.op_stream(op_id, _client(request)) as stream:
            return await _pump(request, stream)
    except TooManyStreams as exc:
        return _too_many(exc)


def _too_many(exc: TooManyStreams) -> web.Response:
    """503 when the server is full; 429 when this client holds its share."""
    return web.Response(status=429 if exc.per_client else 503, text=f"{exc}\n", headers={"Retry-After": "10"})


async def _pump(request: web.Request, stream: Stream) -> web.StreamResponse:
    """Write a stream's queue to the browser as server-sent events until either side ends it."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    # A browser that goes away cancels this handler (handler_cancellation): its slot and consumer are
    # released by the callers' context managers at once, not at the next keepalive.
    with contextlib.suppress(ConnectionError):
        await resp.write(b"retry: 1000\n\n")
        while True:
            try:
                item = await asyncio.wait_for(stream.queue.get(), KEEPALIVE_S)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            if item is None:
                break
            name, data = item
            await resp.write(f"event: {name}\ndata: {data}\n\n".encode())
    return resp


async def schedules(request: web.Request) -> web.Response:
    """The schedules nats-server fires (`ktrdr schedule list --json`), as JSON: the list page shows them."""
    rows = await request.app[HUB].schedules()
    return web.Response(text=json.dumps(rows, default=str), content_type="application/json")


PAGE_ROWS = 50  # rows per page of /ops.json unless `limit` asks for fewer or more (at most MAX_PAGE)


def _filters(query: Any) -> tuple[Filters, str | None, int]:
    """The list's filters from the query string, checked as `ktrdr ops list` checks its options;
    ValueError with the line to show for anything else."""
    from typing import get_args

    from ktrdr.ops.view import Status

    known = {"status", "type", "pool", "since", "until", "text", "symbol", "before", "limit"}
    extra = sorted(set(query) - known)
    if extra:
        raise ValueError(f"unknown filter {extra[0][:40]!r} (known: {', '.join(sorted(known))})")
    got = {k: (query.get(k) or "").strip() or None for k in known}
    for k, v in got.items():
        if v is not None and len(v) > MAX_TEXT:
            raise ValueError(f"{k} must be at most {MAX_TEXT} characters")
    if got["status"] is not None and got["status"] not in get_args(Status):
        raise ValueError(f"status must be one of {', '.join(get_args(Status))}")
    if got["text"] is not None:
        got["text"] = check_text(got["text"])
    for k in ("type", "pool"):
        if got[k] is not None and not is_token(got[k]):
            raise ValueError(f"{k} {got[k]!r} is not a name (letters, digits, - and _)")
    try:
        limit = int(got["limit"] or PAGE_ROWS)
    except ValueError:
        raise ValueError("limit must be a whole number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1 to {MAX_PAGE}")
    filters = Filters(status=got["status"], op_type=got["type"], pool=got["pool"], symbol=got["symbol"],
                      text=got["text"], since=parse_when(got["since"]) if got["since"] else None,
                      until=parse_when(got["until"]) if got["until"] else None)
    if got["before"]:
        before_key(got["before"])
    return filters, got["before"], limit


async def search(request: web.Request) -> web.Response:
    """A page of the list, filtered on the server through the operations index (GET /ops.json)."""
    try:
        filters, before, limit = _filters(request.query)
    except ValueError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(await request.app[HUB].search(filters, before, limit))


async def events_download(request: web.Request) -> web.Response:
    """Every stored event of one operation as a JSON file (GET /ops/ID/events.json)."""
    op_id, hub, missing = await _stored(request)
    if missing is not None:
        return missing
    body = json.dumps(await hub.events_json(op_id), default=str, indent=1)
    return web.Response(text=body, content_type="application/json", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{op_id}.events.json"'})


async def _stored(request: web.Request) -> tuple[str, Hub, web.Response | None]:
    """The request's op id, the hub, and the 404 to answer when no such operation is stored."""
    op_id = _op_id(request)
    hub = request.app[HUB]
    if not await hub.exists(op_id):
        return op_id, hub, web.json_response({"error": f"no operation {op_id} is stored"}, status=404)
    return op_id, hub, None


async def timeline(request: web.Request) -> web.Response:
    """A workflow's children, each from its start to its end, for the timeline its page draws."""
    op_id, hub, missing = await _stored(request)
    return missing or web.json_response(await hub.timeline(op_id))


async def curves(request: web.Request) -> web.Response:
    """A training's metrics per epoch (the points its page draws), for the comparison page."""
    op_id, hub, missing = await _stored(request)
    return missing or web.json_response(await hub.curves(op_id))


async def compare_page(request: web.Request) -> web.Response:
    """Two or more trainings' curves overlaid; the ids are in the query (`?ops=ID,ID`), read and
    checked by the page's script, each fetched from /ops/ID/curves (which checks it again)."""
    return web.Response(body=request.app[CONF]["compare_html"], content_type="text/html", charset="utf-8")


async def backtest(request: web.Request) -> web.Response:
    """A backtest's figures and equity curve against buy-and-hold, as JSON (the page draws it)."""
    op_id = _op_id(request)
    status, body = await request.app[HUB].backtest(op_id)
    return web.json_response(body, status=status)


async def leaderboard(request: web.Request) -> web.Response:
    """A sweep's leaderboard and its variants' validation-loss curves, as JSON (the page draws them)."""
    op_id = _op_id(request)
    status, body = await request.app[HUB].leaderboard(op_id)
    return web.json_response(body, status=status)


async def cancel(request: web.Request) -> web.Response:
    op_id = _op_id(request)
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return web.json_response({"ok": False, "note": "cross-origin request refused"}, status=403)
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        return web.json_response({"ok": False, "note": "cross-site request refused"}, status=403)
    if request.headers.get(CANCEL_HEADER) != "1":
        return web.json_response({"ok": False, "note": f"a cancel needs the {CANCEL_HEADER} header"}, status=403)
    if _session(request) is None:
        return web.json_response({"ok": False, "note": "this page is read-only: open it through the link "
                                  "`ktrdr web` prints to cancel"}, status=403)
    status, body = await request.app[HUB].cancel(op_id)
    return web.json_response(body, status=status)


# ------------------------------------------------------------------------------------------ app
def create_app(hub: Hub, *, allowed_hosts: set[str] | None, secret: bytes | None = None) -> web.Application:
    """The page's app; `secret` signs the login codes (serve() writes it to web.secret; without one,
    a random one nobody knows: every page read-only)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_guard])
    app[HUB] = hub
    app[CONF] = {
        "secret": secret or secrets.token_bytes(32),
        "sessions": {},
        "used_codes": {},
        "allowed_hosts": allowed_hosts,
        "list_html": _pages(_read("list.html")),
        "op_html": _pages(_read("op.html")),
        "compare_html": _read("compare.html"),
        "static": {name: _read(name) for name in STATIC},
    }
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/", list_page)
    app.router.add_get(LOGIN_PATH, login)
    app.router.add_get("/events", list_events)
    app.router.add_get("/schedules", schedules)
    app.router.add_get("/ops/{op_id}", op_page)
    app.router.add_get("/ops.json", search)
    app.router.add_get("/ops/{op_id}/events", op_events)
    app.router.add_get("/ops/{op_id}/events.json", events_download)
    app.router.add_get("/ops/{op_id}/timeline", timeline)
    app.router.add_get("/ops/{op_id}/curves", curves)
    app.router.add_get("/compare", compare_page)
    app.router.add_get("/ops/{op_id}/backtest", backtest)
    app.router.add_get("/ops/{op_id}/leaderboard", leaderboard)
    app.router.add_post("/ops/{op_id}/cancel", cancel)
    app.router.add_get("/static/{name}", static_file)
    return app


def _allowed_hosts(host: str, port: int, extra: list[str]) -> set[str] | None:
    """Host header values accepted: this server's loopback names (and --allow-host ones). None (any)
    when it listens on a non-loopback address without --allow-host: the operator chose exposure."""
    names = {h.lower() for h in extra}
    if _is_loopback(host):
        names |= {"127.0.0.1", "localhost", "[::1]", host.lower()}
    elif not names:
        return None
    return names | {f"{n}:{port}" for n in names}


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # a wildcard bind: the name that reaches it here
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


async def serve(settings: Settings, host: str = DEFAULT_HOST, port: int | None = None, *,
                stop: asyncio.Event | None = None, allow_hosts: list[str] | None = None,
                max_streams: int = MAX_STREAMS, history: int = 200, connect_timeout: float = 30.0,
                announce_login: bool = False) -> None:
    """Connect to NATS (ktrdr.client.Client(settings)), listen on host:port (0 = a free port), print
    `ktrdr web: serving on <url>` (and with `announce_login`, a one-time login link on stderr), record
    it in <run_dir>/web.url, and serve until `stop` is set."""
    stop = stop or asyncio.Event()
    hub = Hub(settings, max_streams=max_streams, history=history)
    hub_task = asyncio.create_task(hub.run(stop))
    waiter = asyncio.create_task(hub.connected.wait())
    done, _ = await asyncio.wait({hub_task, waiter}, timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        stop.set()
        hub_task.cancel()
        raise ConnectionError(f"could not reach NATS within {connect_timeout:g} s (is the stack up? `ktrdr status`)")
    secret = write_secret(settings)
    runner = web.AppRunner(create_app(hub, allowed_hosts=None, secret=secret), access_log=None,
                           handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, default_port() if port is None else port, shutdown_timeout=2.0)
    url = ""
    try:
        await site.start()
        bound = runner.addresses[0][1]
        runner.app[CONF]["allowed_hosts"] = _allowed_hosts(host, bound, allow_hosts or [])
        url = _url(host, bound)
        with contextlib.suppress(OSError):
            web_url_file(settings).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            web_url_file(settings).write_text(url + "\n")
            os.chmod(web_url_file(settings), 0o600)
        print(f"{READY_PREFIX}{url}", flush=True)
        if announce_login:
            print(f"ktrdr web: to cancel from the page, open {url.rstrip('/')}{LOGIN_PATH}?code="
                  f"{make_login_code(secret)} (once)", file=sys.stderr, flush=True)
        if runner.app[CONF]["allowed_hosts"] is None:
            print("ktrdr web: warning: listening beyond loopback with no --allow-host; anyone who reaches "
                  "this port can see operations and cancel them", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        stop.set()
        hub.close_streams()
        with contextlib.suppress(OSError):
            if url and web_url_file(settings).read_text().strip() == url:  # still ours: a newer server may own it
                web_url_file(settings).unlink()
        with contextlib.suppress(OSError, ValueError):
            if bytes.fromhex(web_secret_file(settings).read_text().strip()) == secret:  # likewise
                web_secret_file(settings).unlink()
        await runner.cleanup()
        hub_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await hub_task


def run(settings: Settings, host: str, port: int | None, **kwargs: Any) -> int:
    """Serve in the foreground until SIGINT/SIGTERM; 0 on a clean stop, 1 when NATS cannot be reached."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(settings, host, port, stop=stop, **kwargs)

    try:
        asyncio.run(main())
    except (ConnectionError, OSError) as exc:
        print(f"ktrdr web: error: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("a port is 0..65535 (0: any free port)")
    return value


def _bounded(lo: int, hi: int) -> Any:
    def parse(raw: str) -> int:
        value = int(raw)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"expected {lo}..{hi}")
        return value

    return parse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ktrdr.web",
                                description="The live operations page: follows the OPS stream, serves it to browsers.")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=_port, default=None, help="port (default KTRDR_WEB_PORT or 8780; 0: any free)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another Host name browsers use to reach this server (repeatable)")
    p.add_argument("--max-streams", type=_bounded(1, 1000), default=MAX_STREAMS, help="live pages open at once")
    p.add_argument("--history", type=_bounded(10, 10_000), default=200, help="events shown on an operation's page")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return run(default_settings(), args.host, args.port, allow_hosts=args.allow_host,
               max_streams=args.max_streams, history=args.history)
