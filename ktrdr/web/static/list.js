// The operations list: a snapshot on connect, then changed rows pushed by the server.
"use strict";

(function () {
  const rows = new Map(); // op_id -> row
  let offsetMs = 0; // server clock minus browser clock, so ages match the CLI's
  let total = 0;
  const tbody = document.querySelector("#ops tbody");

  function applyClock(now) {
    if (now) offsetMs = Date.parse(now) - Date.now();
  }

  // Newest first; children (events that name a parent_op_id) under their parent, oldest first.
  function ordered() {
    const children = new Map();
    const top = [];
    for (const r of rows.values()) {
      if (r.parent_op_id && r.parent_op_id !== r.op_id && rows.has(r.parent_op_id)) {
        if (!children.has(r.parent_op_id)) children.set(r.parent_op_id, []);
        children.get(r.parent_op_id).push(r);
      } else {
        top.push(r);
      }
    }
    top.sort((a, b) => (a.sort < b.sort ? 1 : a.sort > b.sort ? -1 : 0));
    const out = [];
    const walk = (r, depth) => {
      out.push([r, depth]);
      if (depth >= 4) return; // a cycle or a very deep tree: stop indenting
      // a workflow's children share its id's time token: their creation time orders them
      const key = (x) => [x.created || "~", x.sort, x.op_id];
      const kids = (children.get(r.op_id) || []).sort((a, b) => {
        const ka = key(a), kb = key(b);
        for (let i = 0; i < ka.length; i++) if (ka[i] !== kb[i]) return ka[i] < kb[i] ? -1 : 1;
        return 0;
      });
      for (const k of kids) walk(k, depth + 1);
    };
    for (const r of top) walk(r, 0);
    return out;
  }

  function render() {
    const frag = document.createDocumentFragment();
    for (const [r, depth] of ordered()) {
      const tr = KT.el("tr", { "data-op-id": r.op_id, "data-status": r.status,
                               class: depth ? `child depth${Math.min(depth, 2)}` : null });
      const op = KT.el("td", { class: "op" });
      if (depth) op.appendChild(KT.el("span", { class: "tree" }, "└"));
      op.appendChild(KT.el("a", { href: "/ops/" + encodeURIComponent(r.op_id), title: r.line }, r.op_id));
      tr.appendChild(op);
      const st = KT.el("td");
      st.appendChild(KT.el("span", { class: "status " + r.status }, r.status));
      tr.appendChild(st);
      tr.appendChild(KT.el("td", {}, r.type));
      const pr = KT.el("td", { class: "num" });
      pr.appendChild(KT.bar(r.percentage, r.status, false));
      pr.appendChild(KT.el("span", { class: "pct" }, KT.pct(r.percentage)));
      tr.appendChild(pr);
      tr.appendChild(KT.el("td", { class: "num age", "data-created": r.created }, KT.age(r.created, offsetMs)));
      tr.appendChild(KT.el("td", { class: "description" }, r.description));
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
    document.getElementById("empty").hidden = rows.size > 0;
    const more = document.getElementById("more");
    more.hidden = total <= rows.size;
    more.textContent = `${total - rows.size} older operations not shown (ktrdr ops list --limit 0 lists them all).`;
  }

  KT.follow("/events", {
    snapshot(d) {
      rows.clear();
      for (const r of d.rows) rows.set(r.op_id, r);
      total = d.total;
      applyClock(d.now);
      render();
    },
    ops(d) {
      for (const r of d.rows) rows.set(r.op_id, r);
      total = Math.max(d.total, rows.size);
      applyClock(d.now);
      render();
    },
  });

  // The schedules nats-server fires (GET /schedules: `ktrdr schedule list --json`), looked at every 10 s.
  async function loadSchedules() {
    let list = [];
    try {
      const r = await fetch("/schedules", { credentials: "same-origin" });
      if (r.ok) list = await r.json();
    } catch (e) { return; }
    const table = document.getElementById("schedules");
    const body = table.querySelector("tbody");
    const frag = document.createDocumentFragment();
    for (const s of list) {
      const tr = KT.el("tr", { "data-schedule": s.name, "data-state": s.state });
      tr.appendChild(KT.el("td", {}, s.name));
      tr.appendChild(KT.el("td", {}, s.spec + (s.tz ? " (" + s.tz + ")" : "")));
      tr.appendChild(KT.el("td", {}, s.overlap));
      tr.appendChild(KT.el("td", {}, s.state));
      tr.appendChild(KT.el("td", { class: "description" }, s.command));
      const last = KT.el("td");
      const f = s.last_firing;
      if (!f) last.textContent = "never fired";
      else if (f.op_id) {
        last.appendChild(KT.el("span", {}, f.fired_at + " " + f.outcome + " "));
        last.appendChild(KT.el("a", { href: "/ops/" + encodeURIComponent(f.op_id) }, f.op_id));
      } else last.textContent = f.fired_at + " " + f.outcome;
      tr.appendChild(last);
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    table.hidden = list.length === 0;
    document.getElementById("schedules-title").hidden = list.length === 0;
  }
  loadSchedules();
  setInterval(loadSchedules, 10000);

  // Ages move on by themselves; this touches only the age cells, nothing is fetched.
  setInterval(() => {
    for (const td of tbody.querySelectorAll("td.age")) td.textContent = KT.age(td.getAttribute("data-created"), offsetMs);
  }, 1000);
})();
