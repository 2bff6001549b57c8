// Shared helpers for the KTRDR pages. Plain JavaScript, no build step, no dependencies.
// Every value from the server goes into the page through textContent or setAttribute, never as HTML.
"use strict";

window.KT = (function () {
  const OP_ID = /^[a-z]+-\d{8}T\d{12}-[0-9a-f]{6}$/;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  // The CLI's `ops list` age: 45s, 12m, 3h, 2d.
  function age(iso, offsetMs) {
    if (!iso) return "-";
    let secs = (Date.now() + offsetMs - Date.parse(iso)) / 1000;
    if (secs < 0) secs = 0;
    for (const [unit, size] of [["d", 86400], ["h", 3600], ["m", 60]]) {
      if (secs >= size) return Math.round(secs / size) + unit;
    }
    return Math.round(secs) + "s";
  }

  function pct(value) {
    return (Number(value) || 0).toFixed(1) + "%";
  }

  function time(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  function bar(percentage, status, big) {
    const outer = el("div", { class: `bar ${big ? "big " : ""}${status || ""}` });
    const fill = el("div", { class: "fill" });
    fill.style.width = Math.max(0, Math.min(100, Number(percentage) || 0)) + "%";
    outer.appendChild(fill);
    return outer;
  }

  // Follow a server-sent-event stream. The browser reconnects by itself after a dropped connection;
  // a refused one (503: too many pages open, or NATS away) is retried here after a pause.
  function follow(url, handlers) {
    const conn = document.getElementById("conn");
    const state = (text, cls) => { if (conn) { conn.textContent = text; conn.className = "conn " + cls; } };
    let source = null;
    function open() {
      source = new EventSource(url);
      source.onopen = () => state("live", "live");
      source.onerror = () => {
        if (source.readyState === EventSource.CLOSED) {
          state("disconnected, retrying…", "down");
          setTimeout(open, 3000);
        } else {
          state("reconnecting…", "down");
        }
      };
      for (const [name, fn] of Object.entries(handlers)) {
        source.addEventListener(name, (e) => fn(JSON.parse(e.data)));
      }
    }
    open();
  }

  // Whether this browser may cancel: it came in through the link `ktrdr web` prints (a session
  // cookie, HttpOnly: the page never sees it). Anyone else gets the page read-only.
  function canCancel() {
    const meta = document.querySelector('meta[name="ktrdr-can-cancel"]');
    return meta !== null && meta.getAttribute("content") === "1";
  }

  return { OP_ID, el, age, pct, time, bar, follow, canCancel };
})();
