// The operations list: a snapshot on connect, then changed rows pushed by the server. With filters,
// or after "Older", the rows are the server's pages from the operations index (GET /ops.json), and
// pushes update the rows shown without adding others.
"use strict";

(function () {
  const rows = new Map(); // op_id -> row
  let offsetMs = 0; // server clock minus browser clock, so ages match the CLI's
  let total = 0;
  let snapshotLimit = 0; // a snapshot this long may have older operations behind it
  let paged = false; // rows come from /ops.json pages: live pushes only update them
  let cursor = null; // the next older page's `before`
  const tbody = document.querySelector("#ops tbody");
  const form = document.getElementById("filters");
  const older = document.getElementById("older");
  const note = document.getElementById("filter-note");

  // The form's filters; the page's own address may set the rows per page (/?limit=20).
  function filters() {
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) q.set(k, String(v).trim());
    return q;
  }

  function query(before) {
    const q = filters();
    const limit = new URLSearchParams(location.search).get("limit");
    if (limit) q.set("limit", limit);
    if (before) q.set("before", before);
    return q;
  }

  function filtering() {
    return [...filters().keys()].length > 0;
  }

  async function fetchPage(before) {
    const resp = await fetch("/ops.json?" + query(before).toString(), { headers: { Accept: "application/json" } });
    const body = await resp.json();
    if (!resp.ok) {
      note.textContent = body.error || `the server answered ${resp.status}`;
      note.hidden = false;
      return;
    }
    const searched = body.searched_to
      ? `searched operations made since ${body.searched_to.replace("T", " ").slice(0, 16)} UTC; "Older" searches further back`
      : "";
    note.hidden = !(body.note || searched);
    note.textContent = [body.note, searched].filter((t) => t).join(" · ");
    if (!before) rows.clear();
    for (const r of body.rows) rows.set(r.op_id, r);
    cursor = body.next_before;
    paged = true;
    applyClock(body.now);
    render();
  }

  function oldestShown() {
    let oldest = null;
    for (const r of rows.values()) if (oldest === null || r.sort < oldest.sort) oldest = r;
    return oldest ? oldest.op_id : null;
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    fetchPage(null);
  });
  document.getElementById("clear").addEventListener("click", () => {
    form.reset();
    fetchPage(null);
  });
  older.addEventListener("click", () => {
    const before = paged ? cursor : oldestShown();
    if (before) fetchPage(before);
  });

  const picked = new Set(); // trainings ticked for comparison

  function compareLink() {
    const link = document.getElementById("compare-link");
    link.hidden = picked.size < 2;
    link.setAttribute("href", "/compare?ops=" + [...picked].map(encodeURIComponent).join(","));
  }

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
      if (r.domain === "training") { // pick two or more to compare their curves
        const box = KT.el("input", { type: "checkbox", class: "pick", "data-op-id": r.op_id,
                                     title: "compare this training's curves with others" });
        box.checked = picked.has(r.op_id);
        box.addEventListener("change", () => {
          if (box.checked) picked.add(r.op_id); else picked.delete(r.op_id);
          compareLink();
        });
        op.appendChild(box);
      }
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
    const more = document.getElementById("more");
    more.hidden = paged || total <= rows.size;
    more.textContent = `${total - rows.size} older operations not shown here: "Older" pages back through them.`;
    older.hidden = paged ? !cursor : !(total > rows.size || (snapshotLimit && rows.size >= snapshotLimit));
    document.getElementById("empty").hidden = rows.size > 0 || (paged && filtering());
    document.getElementById("nomatch").hidden = rows.size > 0 || !(paged && filtering());
  }

  KT.follow("/events", {
    snapshot(d) {
      if (paged) return; // the pages shown stay; pushes update their rows
      rows.clear();
      for (const r of d.rows) rows.set(r.op_id, r);
      total = d.total;
      snapshotLimit = d.limit || 0;
      applyClock(d.now);
      render();
    },
    ops(d) {
      for (const r of d.rows) if (!paged || rows.has(r.op_id)) rows.set(r.op_id, r);
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
