// Two or more trainings' curves overlaid (/compare?ops=ID,ID,...): each training's per-epoch metrics
// from /ops/ID/curves, one colour per training, on shared axes.
"use strict";

(function () {
  const MAX_RUNS = 8;
  const COLOURS = ["#2f6fd6", "#e67e22", "#2e8540", "#c0392b", "#8e44ad", "#16a085", "#7f8c8d", "#d4ac0d"];
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (id) => document.getElementById(id);
  const asked = (new URLSearchParams(location.search).get("ops") || "").split(",").map((s) => s.trim())
    .filter((s) => s);
  const ids = [...new Set(asked)].filter((s) => KT.OP_ID.test(s)).slice(0, MAX_RUNS);
  const note = $("compare-note");
  if (ids.length < asked.length) {
    note.hidden = false;
    note.textContent = `${asked.length - ids.length} of the ids asked for are not operation ids, repeats, or past ${MAX_RUNS}: left out.`;
  }

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // One chart: the metric `key` per epoch of every run that has it.
  function draw(svg, runs, key) {
    const W = 560, H = 250, m = { l: 56, r: 14, t: 14, b: 34 };
    const series = runs.map((r) => r.points.filter(([, mt]) => mt[key] != null).map(([e, mt]) => [e, mt[key]]));
    const pts = series.flat();
    if (!pts.length) { svg.replaceChildren(); return; }
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
    const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.05 || 0.05;
    y0 -= pad; y1 += pad;
    const [x0, x1] = [Math.min(...xs) - 0.5, Math.max(Math.max(...xs), Math.min(...xs) + 1) + 0.5];
    const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
    const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
    const parts = [];
    for (let i = 0; i <= 4; i++) {
      const t = y0 + ((y1 - y0) * i) / 4;
      parts.push(svgEl("line", { class: "grid", x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t) }));
      parts.push(svgEl("text", { x: m.l - 6, y: sy(t) + 4, "text-anchor": "end" }, String(+t.toPrecision(3))));
    }
    const step = Math.max(1, Math.ceil((x1 - x0) / 10));
    for (let e = Math.ceil(x0); e <= x1; e += step) {
      parts.push(svgEl("text", { x: sx(e), y: H - m.b + 16, "text-anchor": "middle" }, String(e)));
    }
    parts.push(svgEl("text", { x: (m.l + W - m.r) / 2, y: H - 4, "text-anchor": "middle" }, "epoch"));
    parts.push(svgEl("line", { class: "axis", x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }));
    parts.push(svgEl("line", { class: "axis", x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }));
    series.forEach((s, i) => {
      if (!s.length) return;
      const colour = COLOURS[i % COLOURS.length];
      parts.push(svgEl("polyline", { class: "series", stroke: colour, "data-op-id": runs[i].op_id,
                                     points: s.map(([x, y]) => `${sx(x)},${sy(y)}`).join(" ") }));
      for (const [x, y] of s) {
        const c = svgEl("circle", { class: "pt", cx: sx(x), cy: sy(y), r: 3, fill: colour,
                                    "data-op-id": runs[i].op_id, "data-epoch": x });
        c.appendChild(svgEl("title", {}, `${runs[i].op_id} epoch ${x}: ${key} ${y.toFixed(4)}`));
        parts.push(c);
      }
    });
    svg.replaceChildren(...parts);
  }

  function table(runs) {
    const frag = document.createDocumentFragment();
    runs.forEach((r, i) => {
      const tr = KT.el("tr", { "data-op-id": r.op_id });
      const sw = KT.el("td");
      sw.appendChild(KT.el("span", { class: `swatch c${i % COLOURS.length}` })); // (CSP: no inline styles)
      tr.appendChild(sw);
      const op = KT.el("td", { class: "op" });
      op.appendChild(KT.el("a", { href: "/ops/" + encodeURIComponent(r.op_id) }, r.op_id));
      tr.appendChild(op);
      const st = KT.el("td");
      st.appendChild(KT.el("span", { class: "status " + r.status }, r.status));
      tr.appendChild(st);
      tr.appendChild(KT.el("td", { class: "num" }, String(r.points.length)));
      tr.appendChild(KT.el("td", { class: "description" }, r.error || r.description));
      frag.appendChild(tr);
    });
    document.querySelector("#runs tbody").replaceChildren(frag);
  }

  async function load() {
    const runs = [];
    const missing = [];
    for (const id of ids) {
      const resp = await fetch("/ops/" + encodeURIComponent(id) + "/curves", { credentials: "same-origin" });
      if (resp.ok) runs.push(await resp.json());
      else missing.push(id);
    }
    if (missing.length || runs.length < 2) {
      note.hidden = false;
      note.textContent = (missing.length ? `No stored operation ${missing.join(", ")}. ` : "")
        + (runs.length < 2 ? "Pick two or more trainings on the list to compare them." : "");
    }
    table(runs);
    draw($("val-loss-chart"), runs, "val_loss");
    draw($("val-acc-chart"), runs, "val_accuracy");
    draw($("train-loss-chart"), runs, "train_loss");
  }

  load();
})();
