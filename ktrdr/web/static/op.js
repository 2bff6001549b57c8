// One operation: its progress line and bar, its event history, a cancel button while it has not
// ended, for a training loss and accuracy per epoch drawn as SVG that grows with each epoch, and for
// a completed backtest (or a training workflow that ran one) its figures and its equity and drawdown
// against buy-and-hold; for a completed sweep its leaderboard (sortable by any column) with its
// variants' validation-loss curves overlaid; for a workflow, its children as a timeline.
"use strict";

(function () {
  const match = /^\/ops\/([^/]+)$/.exec(location.pathname);
  const opId = match ? decodeURIComponent(match[1]) : "";
  if (!KT.OP_ID.test(opId)) return; // the server answers malformed ids with 400; nothing to follow
  const SVG = "http://www.w3.org/2000/svg";
  const state = { view: null, rows: [], omitted: 0, count: 0, curves: new Map(), maxRows: 200,
                  painted: false, backtest: "", sweep: "", board: null, sortKey: "", sortDir: 1 };
  const $ = (id) => document.getElementById(id);
  $("op-id").textContent = opId;
  $("download").setAttribute("href", "/ops/" + encodeURIComponent(opId) + "/events.json");
  document.title = `${opId} · KTRDR`;

  // ------------------------------------------------------------------------------------ header
  function renderView() {
    const v = state.view;
    if (!v) return;
    const st = $("status");
    st.textContent = v.status;
    st.className = "status " + v.status;
    $("type").textContent = v.type;
    $("description").textContent = v.description;
    $("line").textContent = v.line;
    $("pct").textContent = KT.pct(v.percentage);
    const fill = $("bar-fill");
    // The bar moves smoothly while the operation runs; its first drawing, and an ended operation's,
    // are where it is (growing from empty, a completed one looked five-sixths full beside "100.0%").
    fill.style.transition = state.painted && !v.terminal ? "" : "none";
    fill.style.width = Math.max(0, Math.min(100, v.percentage)) + "%";
    fill.parentElement.className = "bar big " + v.status;
    state.painted = true;
    const cancel = $("cancel");
    cancel.hidden = v.terminal; // nothing to cancel once it has ended
    cancel.disabled = !KT.canCancel() || v.terminal || cancel.dataset.sent === "1";
    const facts = [["created", v.created], ["started", v.started], ["finished", v.finished],
                   ["elapsed", v.elapsed_s != null ? v.elapsed_s.toFixed(1) + " s" : null],
                   ["worker", v.worker ? `${v.worker} (attempt ${v.attempts})` : null],
                   ["stopped at", v.where], ["error", v.error], ["events", String(state.count)]];
    const dl = document.createDocumentFragment();
    for (const [k, val] of facts) {
      if (!val) continue;
      dl.appendChild(KT.el("dt", {}, k));
      dl.appendChild(KT.el("dd", {}, val));
    }
    $("facts").replaceChildren(dl);
  }

  // ------------------------------------------------------------------------------------ history
  function rowEl(r) {
    const tr = KT.el("tr", { "data-type": r.type });
    tr.appendChild(KT.el("td", { class: "time", title: r.ts }, KT.time(r.ts)));
    tr.appendChild(KT.el("td", {}, r.type));
    tr.appendChild(KT.el("td", { class: "mono" }, r.actor));
    tr.appendChild(KT.el("td", { class: "detail" }, r.detail));
    return tr;
  }

  function renderHistory() {
    const frag = document.createDocumentFragment();
    for (let i = state.rows.length - 1; i >= 0; i--) frag.appendChild(rowEl(state.rows[i])); // newest on top
    document.querySelector("#history tbody").replaceChildren(frag);
    $("event-count").textContent = `(${state.count})`;
    const om = $("omitted");
    om.hidden = state.omitted <= 0;
    om.textContent = `${state.omitted} earlier events not shown (ktrdr ops show ${opId} --events lists them all).`;
  }

  // ------------------------------------------------------------------------------------ curves
  function niceTicks(lo, hi, n) {
    const span = hi - lo || Math.abs(hi) || 1;
    const step0 = span / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(+t.toFixed(10));
    return out;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function drawChart(svg, keys) {
    const W = 560, H = 250, m = { l: 56, r: 14, t: 26, b: 34 };
    const epochs = [...state.curves.keys()].sort((a, b) => a - b);
    const series = keys.map((k) => epochs.filter((e) => state.curves.get(e)[k] != null)
                                         .map((e) => [e, state.curves.get(e)[k]]));
    const ys = series.flat().map((p) => p[1]);
    const parts = [];
    if (!ys.length) { svg.replaceChildren(); return; }
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.05 || 0.05;
    y0 -= pad; y1 += pad;
    // Half an epoch either side, so the first and last points are off the axes.
    const [x0, x1] = [epochs[0] - 0.5, Math.max(epochs[epochs.length - 1], epochs[0] + 1) + 0.5];
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    for (const t of niceTicks(y0, y1, 5)) {
      parts.push(svgEl("line", { class: "grid", x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t) }));
      parts.push(svgEl("text", { x: m.l - 6, y: sy(t) + 4, "text-anchor": "end" }, String(+t.toPrecision(4))));
    }
    const xticks = niceTicks(x0 + 0.5, x1 - 0.5, Math.min(10, x1 - x0)).filter((t) => Number.isInteger(t));
    for (const t of xticks) {
      parts.push(svgEl("text", { x: sx(t), y: H - m.b + 16, "text-anchor": "middle" }, String(t)));
    }
    parts.push(svgEl("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, "epoch"));
    parts.push(svgEl("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    parts.push(svgEl("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    series.forEach((pts, i) => {
      if (!pts.length) return;
      parts.push(svgEl("polyline", { class: `series s${i}`, "data-series": keys[i],
                                     points: pts.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" ") }));
      for (const [x, y] of pts) {
        const c = svgEl("circle", { class: `pt s${i}`, cx: sx(x), cy: sy(y), r: 3.2,
                                    "data-series": keys[i], "data-epoch": x });
        c.appendChild(svgEl("title", {}, `epoch ${x}: ${keys[i]} ${y.toFixed(4)}`));
        parts.push(c);
      }
      parts.push(svgEl("text", { class: `legend${i}`, x: m.l + 8 + i * 130, y: 14 }, keys[i]));
    });
    svg.replaceChildren(...parts);
  }

  function renderCurves() {
    const training = state.view && state.view.domain === "training";
    $("curves").hidden = !(training && state.curves.size);
    if (!state.curves.size) return;
    drawChart($("loss-chart"), ["train_loss", "val_loss"]);
    drawChart($("acc-chart"), ["train_accuracy", "val_accuracy"]);
  }

  // ------------------------------------------------------------------------------------ backtest
  function dateLabel(ms, spanMs) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`;
    return spanMs < 3 * 86400e3 ? `${day.slice(5)} ${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}` : day;
  }

  // Lines against time (ms since the epoch): [{key, values, cls}], y labelled by `fmt`.
  function drawTimeChart(svg, t, lines, fmt, zeroLine) {
    const [W, H] = svg.getAttribute("viewBox").split(" ").slice(2).map(Number);
    const m = { l: 64, r: 14, t: 26, b: 34 };
    if (!t.length) { svg.replaceChildren(); return; }
    const ys = lines.flatMap((l) => l.values).concat(zeroLine != null ? [zeroLine] : []);
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const pad = (y1 - y0) * 0.06 || Math.abs(y1) * 0.05 || 1;
    y0 -= pad; y1 += pad;
    const [x0, x1] = [t[0], t[t.length - 1] > t[0] ? t[t.length - 1] : t[0] + 1];
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    const parts = [];
    for (const v of niceTicks(y0, y1, 5)) {
      parts.push(svgEl("line", { class: "grid", x1: m.l, x2: W - m.r, y1: sy(v), y2: sy(v) }));
      parts.push(svgEl("text", { x: m.l - 6, y: sy(v) + 4, "text-anchor": "end" }, fmt(v)));
    }
    for (let i = 0; i <= 3; i++) {
      const x = x0 + ((x1 - x0) * i) / 3;
      parts.push(svgEl("text", { x: sx(x), y: H - m.b + 16, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle" },
                       dateLabel(x, x1 - x0)));
    }
    if (zeroLine != null) parts.push(svgEl("line", { class: "axis", x1: m.l, x2: W - m.r, y1: sy(zeroLine), y2: sy(zeroLine) }));
    parts.push(svgEl("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    lines.forEach((l, i) => {
      const pts = l.values.map((y, k) => `${sx(t[k]).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
      parts.push(svgEl("polyline", { class: `series s${i}`, "data-series": l.key, "data-points": l.values.length,
                                     "data-last": l.values[l.values.length - 1], "data-min": Math.min(...l.values),
                                     points: pts }));
      parts.push(svgEl("text", { class: `legend${i}`, x: m.l + 8 + i * 150, y: 14 }, l.label));
    });
    svg.replaceChildren(...parts);
  }

  function renderBacktest(bt) {
    $("backtest").hidden = false;
    $("bt-what").textContent = `(${bt.op_id}: ${bt.model} on ${bt.symbols.join(", ")} [${bt.timeframe}], `
      + `${(bt.start || "?").slice(0, 16)} to ${(bt.end || "?").slice(0, 16)}, ${Number(bt.bars).toLocaleString("en")} bars`
      + `${bt.simulated ? ", simulated data" : ""})`;
    const body = document.createDocumentFragment();
    for (const [name, strat, bh] of bt.rows) {
      const tr = KT.el("tr", { "data-figure": name });
      tr.appendChild(KT.el("th", {}, name));
      tr.appendChild(KT.el("td", { class: "num" }, strat));
      tr.appendChild(KT.el("td", { class: "num" }, bh));
      body.appendChild(tr);
    }
    document.querySelector("#bt-figures tbody").replaceChildren(body);
    const c = bt.curve;
    const money = (v) => Math.abs(v) >= 1e4 ? (v / 1e3).toFixed(0) + "k" : String(+v.toPrecision(4));
    drawTimeChart($("equity-chart"), c.t, [
      { key: "equity", label: "strategy", values: c.equity },
      { key: "buy_hold", label: "buy & hold", values: c.buy_hold }], money, bt.capital);
    drawTimeChart($("drawdown-chart"), c.t, [
      { key: "drawdown", label: "strategy", values: c.drawdown.map((v) => v * 100) },
      { key: "buy_hold_drawdown", label: "buy & hold", values: c.buy_hold_drawdown.map((v) => v * 100) }],
      (v) => v.toFixed(1) + "%", 0);
    const note = $("bt-note");
    note.hidden = c.points >= c.bars;
    note.textContent = `${c.points.toLocaleString("en")} of ${c.bars.toLocaleString("en")} bars drawn (each stretch's last, and the worst drawdowns); `
      + `ktrdr ops plot ${bt.op_id} -o F.png draws them from the stored curve.`;
  }

  async function maybeBacktest() {
    const v = state.view;
    if (!v || v.status !== "completed" || state.backtest) return;
    if (v.domain !== "backtest" && v.type !== "training_workflow") return;
    state.backtest = "asked";
    try {
      const resp = await fetch(`/ops/${encodeURIComponent(opId)}/backtest`, { credentials: "same-origin" });
      if (resp.ok) renderBacktest(await resp.json());
      else if (v.domain === "backtest") {
        $("backtest").hidden = false;
        $("bt-note").hidden = false;
        $("bt-note").textContent = (await resp.json()).note || `HTTP ${resp.status}`;
      }
    } catch (err) {
      state.backtest = ""; // try again with the next update
    }
  }

  // ------------------------------------------------------------------------------------ sweep
  const LB_COLUMNS = [["variant", "var"], ["status", "status"], ["val_loss", "val_loss"],
                      ["test_accuracy", "test_acc"], ["sharpe", "sharpe"], ["total_return", "return"],
                      ["model", "model"], ["params", "params"]];

  function lbCell(row, key) {
    const v = row[key];
    if (key === "params") return Object.entries(v || {}).map(([k, x]) => `${k.split(".").pop()}=${JSON.stringify(x)}`).join(" ");
    if (v == null) return "-";
    if (key === "total_return") return (v * 100).toFixed(2) + "%";
    if (typeof v === "number" && key !== "variant") return v.toFixed(4);
    return String(v);
  }

  function renderBoard() {
    const b = state.board;
    const cols = LB_COLUMNS.filter(([k]) => k !== "sharpe" && k !== "total_return" || b.rows.some((r) => k in r));
    const head = KT.el("tr", {});
    head.appendChild(KT.el("th", {}, "rank"));
    for (const [key, label] of cols) {
      const mark = state.sortKey === key ? (state.sortDir > 0 ? " ▲" : " ▼") : "";
      const th = KT.el("th", { "data-key": key, class: "sortable", title: "sort by " + label }, label + mark);
      th.addEventListener("click", () => {
        state.sortDir = state.sortKey === key ? -state.sortDir : 1;
        state.sortKey = key;
        renderBoard();
      });
      head.appendChild(th);
    }
    document.querySelector("#lb-table thead").replaceChildren(head);
    const rows = b.rows.map((r, i) => [r, i + 1]); // the rank the sweep gave (its rank_by)
    if (state.sortKey) {
      const k = state.sortKey;
      const val = (r) => (k === "params" ? lbCell(r, k) : r[k]);
      rows.sort(([a], [c]) => {
        const x = val(a), y = val(c);
        if (x == null || y == null) return x == null ? (y == null ? 0 : 1) : -1; // no value: last
        return (x < y ? -1 : x > y ? 1 : 0) * state.sortDir;
      });
    }
    const body = document.createDocumentFragment();
    for (const [r, rank] of rows) {
      const tr = KT.el("tr", { "data-variant": String(r.variant), class: r.status === "completed" ? "" : "ended-" + r.status });
      tr.appendChild(KT.el("td", { class: "num" }, r.status === "completed" ? String(rank) : "-"));
      for (const [key] of cols) {
        const cell = key === "status" && r.error ? `${r.status} (${r.error})` : lbCell(r, key);
        tr.appendChild(KT.el("td", { class: key === "params" || key === "model" || key === "status" ? "mono" : "num" }, cell));
      }
      body.appendChild(tr);
    }
    document.querySelector("#lb-table tbody").replaceChildren(body);
  }

  function drawBoardCurves() {
    const b = state.board;
    const svg = $("lb-chart");
    const W = 900, H = 260, m = { l: 56, r: 14, t: 14, b: 34 };
    const lines = b.rows.filter((r) => b.curves[String(r.variant)]).map((r) => [r, b.curves[String(r.variant)]]);
    const ys = lines.flatMap(([, c]) => c.filter((y) => y != null));
    if (!ys.length) { svg.replaceChildren(); return; }
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.05 || 0.05;
    y0 -= pad; y1 += pad;
    const n = Math.max(...lines.map(([, c]) => c.length), 2);
    const sx = (x) => m.l + ((x - 0.5) / n) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    const parts = [];
    for (const t of niceTicks(y0, y1, 5)) {
      parts.push(svgEl("line", { class: "grid", x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t) }));
      parts.push(svgEl("text", { x: m.l - 6, y: sy(t) + 4, "text-anchor": "end" }, String(+t.toPrecision(4))));
    }
    for (const t of niceTicks(1, n, Math.min(10, n)).filter((t) => Number.isInteger(t))) {
      parts.push(svgEl("text", { x: sx(t), y: H - m.b + 16, "text-anchor": "middle" }, String(t)));
    }
    parts.push(svgEl("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, "epoch"));
    parts.push(svgEl("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    lines.forEach(([r, c], i) => {
      const pts = c.map((y, k) => (y == null ? null : `${sx(k + 1).toFixed(1)},${sy(y).toFixed(1)}`)).filter(Boolean);
      const line = svgEl("polyline", { class: `series variant${i === 0 ? " best" : ""}`, "data-variant": String(r.variant),
                                      style: `stroke: hsl(${(i * 137) % 360} 60% 45%)`, points: pts.join(" ") });
      line.appendChild(svgEl("title", {}, `variant ${r.variant}: ${lbCell(r, "params")}`));
      parts.push(line);
    });
    svg.replaceChildren(...parts);
  }

  async function maybeSweep() {
    const v = state.view;
    if (!v || v.status !== "completed" || v.type !== "training_sweep" || state.sweep) return;
    state.sweep = "asked";
    try {
      const resp = await fetch(`/ops/${encodeURIComponent(opId)}/leaderboard`, { credentials: "same-origin" });
      if (!resp.ok) return;
      state.board = await resp.json();
      $("sweep").hidden = false;
      $("lb-what").textContent = `(${state.board.completed}/${state.board.variants} variants completed, ranked by `
        + `${state.board.rank_by}; click a column to sort)`;
      renderBoard();
      drawBoardCurves();
    } catch (err) {
      state.sweep = ""; // try again with the next update
    }
  }

  // ------------------------------------------------------------------------------------ timeline
  // A workflow's children as bars from start (or creation, while queued) to end (or now), coloured
  // by outcome; fetched again as the parent moves on, at most once a second.
  const TL = { asked: 0, last: "", pending: 0 };
  function renderTimeline(d) {
    const kids = d.children || [];
    $("timeline").hidden = kids.length === 0;
    if (!kids.length) return;
    const now = Date.parse(d.now) || Date.now();
    const t0 = (k) => Date.parse(k.started || k.created) || now;
    const t1 = (k) => Date.parse(k.finished) || now;
    const lo = Math.min(...kids.map(t0));
    const hi = Math.max(lo + 1, ...kids.map(t1));
    const W = 900, left = 260, right = 70, rowH = 22, top = 6;
    const svg = $("tl-chart");
    const H = top + kids.length * rowH + 22;
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const x = (t) => left + ((t - lo) / (hi - lo)) * (W - left - right);
    const nodes = [];
    kids.forEach((k, i) => {
      const y = top + i * rowH;
      const g = svgEl("g", { class: "tl-row", "data-op-id": k.op_id, "data-status": k.status });
      const label = svgEl("text", { x: 4, y: y + 15, class: "tl-label" }, `${k.type} ${k.op_id.slice(-6)}`);
      const a = svgEl("a", { href: "/ops/" + encodeURIComponent(k.op_id) });
      a.appendChild(label);
      g.appendChild(a);
      const x0 = x(t0(k)), x1 = Math.max(x(t1(k)), x0 + 2);
      const bar = svgEl("rect", { x: x0.toFixed(1), y: y + 4, width: (x1 - x0).toFixed(1), height: rowH - 8,
                                  class: "tl-bar " + k.status });
      bar.appendChild(svgEl("title", {}, `${k.op_id} ${k.status}: ${k.line || ""}`));
      g.appendChild(bar);
      g.appendChild(svgEl("text", { x: (x1 + 4).toFixed(1), y: y + 15, class: "tl-status" }, k.status));
      nodes.push(g);
    });
    const secs = (hi - lo) / 1000;
    nodes.push(svgEl("text", { x: left, y: H - 6, class: "axis" }, KT.time(new Date(lo).toISOString())));
    nodes.push(svgEl("text", { x: W - right, y: H - 6, class: "axis", "text-anchor": "end" },
                     `+${secs < 120 ? secs.toFixed(1) + " s" : (secs / 60).toFixed(1) + " min"}`));
    svg.replaceChildren(...nodes);
    $("tl-what").textContent = `(${kids.length}${d.more ? "+" : ""}, from start to end)`;
  }

  async function maybeTimeline() {
    const v = state.view;
    if (!v || !v.child_count) return;
    const key = `${v.status} ${v.percentage} ${v.child_count}`;
    if (key === TL.last) return;
    const wait = 1000 - (Date.now() - TL.asked);
    if (wait > 0) { // too soon: once, after the rest of the second, with the view as it is then
      if (!TL.pending) TL.pending = setTimeout(() => { TL.pending = 0; maybeTimeline(); }, wait);
      return;
    }
    TL.asked = Date.now();
    TL.last = key;
    try {
      const resp = await fetch(`/ops/${encodeURIComponent(opId)}/timeline`, { credentials: "same-origin" });
      if (resp.ok) renderTimeline(await resp.json());
      else TL.last = "";
    } catch (err) {
      TL.last = ""; // try again with the next update
    }
  }

  // ------------------------------------------------------------------------------------ cancel
  if (!KT.canCancel()) {
    $("cancel").title = "read-only: open the page through the link `ktrdr web` prints to cancel";
  }
  $("cancel").addEventListener("click", async () => {
    const button = $("cancel");
    const note = $("cancel-note");
    button.disabled = true;
    button.dataset.sent = "1";
    note.hidden = false;
    note.textContent = "cancelling…";
    try {
      const resp = await fetch(`/ops/${encodeURIComponent(opId)}/cancel`, {
        method: "POST", credentials: "same-origin", headers: { "X-KTRDR-Cancel": "1" },
      });
      const body = await resp.json();
      note.textContent = body.note || `HTTP ${resp.status}`;
      if (!body.ok) { button.dataset.sent = ""; renderView(); }
    } catch (err) {
      note.textContent = "the cancel could not be sent: " + err;
      button.dataset.sent = "";
      renderView();
    }
  });

  // ------------------------------------------------------------------------------------ stream
  KT.follow(`/ops/${encodeURIComponent(opId)}/events`, {
    snapshot(d) {
      state.view = d.view;
      state.rows = d.history;
      state.maxRows = d.limit || 200;
      state.omitted = d.omitted;
      state.count = d.count;
      state.curves = new Map(d.curves.map(([e, m]) => [e, m]));
      renderView(); renderHistory(); renderCurves(); maybeBacktest(); maybeSweep(); maybeTimeline();
    },
    update(d) {
      state.view = d.view;
      state.count = d.count;
      state.rows.push(d.row);
      if (state.rows.length > state.maxRows) { state.rows.shift(); state.omitted += 1; }
      renderView(); renderHistory(); maybeBacktest(); maybeSweep(); maybeTimeline();
      if (d.point) { state.curves.set(d.point[0], d.point[1]); renderCurves(); }
    },
  });
})();
