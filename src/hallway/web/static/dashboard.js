// The organiser's dashboard: presence now and over the last hours, flow per minute, scanner
// health with the problem named, revocations, and the event feed. Pictures first, numbers on
// hover (each chart column has a tooltip) and beside.
"use strict";

(() => {
  const ZONES = ["immediate", "near", "far"];
  const present = new Map();   // id -> SPEC §6 present entry
  let feed = [];
  let role = "scanner";
  let series = null;
  const seqs = H.tracker();
  let timer = null;

  const $ = (id) => document.getElementById(id);

  function nice(max) {
    if (max <= 5) return 5;
    const p = Math.pow(10, Math.floor(Math.log10(max)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= max) return m * p;
    return 10 * p;
  }

  function hhmm(ts) { return H.clock(ts); }

  function drawPresent() {
    const box = $("chart-present");
    if (!series) { box.replaceChildren(H.el("p", {class: "muted", text: "loading…"})); return; }
    const W = 800, Ht = 260, L = 36, R = 8, T = 16, B = 26;
    const n = series.zones.far.length;
    const totals = [...Array(n).keys()].map((i) => ZONES.reduce((s, z) => s + (series.zones[z] || [])[i] || 0, 0));
    const top = nice(Math.max(1, ...totals));
    const x = (i) => L + (W - L - R) * (n <= 1 ? 0 : i / (n - 1));
    const y = (v) => T + (Ht - T - B) * (1 - v / top);
    const root = H.svg("svg", {viewBox: `0 0 ${W} ${Ht}`, role: "img",
                                 "aria-label": "people present over time, by zone"});
    const tick = top <= 5 ? 1 : top / 5;
    for (let v = 0; v <= top + 1e-9; v += tick) {
      root.append(H.svg("line", {class: "gridline", x1: L, x2: W - R, y1: y(v), y2: y(v)}),
                  H.svg("text", {class: "axis", x: L - 6, y: y(v) + 4, "text-anchor": "end", text: String(Math.round(v))}));
    }
    const base = new Array(n).fill(0);
    for (const zone of ["far", "near", "immediate"]) {
      const values = series.zones[zone] || new Array(n).fill(0);
      const upper = values.map((v, i) => base[i] + v);
      let d = `M ${x(0)} ${y(upper[0])}`;
      for (let i = 1; i < n; i++) d += ` L ${x(i)} ${y(upper[i])}`;
      for (let i = n - 1; i >= 0; i--) d += ` L ${x(i)} ${y(base[i])}`;
      root.append(H.svg("path", {d: d + " Z", class: `area area-${zone}`}));
      for (let i = 0; i < n; i++) base[i] = upper[i];
    }
    const step = Math.max(1, Math.round(n / 6));
    for (let i = 0; i < n; i += step) {
      if (x(i) > W - R - 30) continue;  // no label cut off at the right edge
      root.append(H.svg("text", {class: "axis", x: x(i), y: Ht - 6, "text-anchor": "middle",
                                 text: hhmm(series.start + i * series.bucket_s)}));
    }
    const w = (W - L - R) / Math.max(1, n - 1);
    for (let i = 0; i < n; i++) {
      const parts = ZONES.map((z) => `${(series.zones[z] || [])[i] || 0} ${z}`).join(", ");
      const hit = H.svg("rect", {x: x(i) - w / 2, y: T, width: w, height: Ht - T - B, class: "hit"});
      hit.append(H.svg("title", {text: `${hhmm(series.start + i * series.bucket_s)}: ${totals[i]} present (${parts})`}));
      root.append(hit);
    }
    box.replaceChildren(root);
    $("legend-present").replaceChildren(...ZONES.map((z) => H.el("span", {class: `c-${z}`, text: z})));
  }

  function drawFlow() {
    const box = $("chart-flow");
    if (!series) return;
    const W = 800, Ht = 200, L = 36, R = 8, T = 10, B = 26;
    const count = Math.min(60, series.arrivals.length);
    const first = series.arrivals.length - count;
    const arr = series.arrivals.slice(first), dep = series.departures.slice(first);
    const top = nice(Math.max(1, ...arr, ...dep));
    const mid = T + (Ht - T - B) / 2;
    const scale = (Ht - T - B) / 2 / top;
    const bw = (W - L - R) / count;
    const root = H.svg("svg", {viewBox: `0 0 ${W} ${Ht}`, role: "img",
                                 "aria-label": "arrivals and departures per minute"});
    root.append(H.svg("line", {class: "gridline", x1: L, x2: W - R, y1: mid, y2: mid}),
                H.svg("text", {class: "axis", x: L - 6, y: T + 8, "text-anchor": "end", text: String(top)}),
                H.svg("text", {class: "axis", x: L - 6, y: Ht - B, "text-anchor": "end", text: String(top)}));
    for (let i = 0; i < count; i++) {
      const t = series.start + (first + i) * series.bucket_s;
      const g = H.svg("g", {});
      g.append(H.svg("rect", {x: L + i * bw + 1, y: mid - arr[i] * scale, width: Math.max(1, bw - 2), height: arr[i] * scale, class: "bar-arr"}),
               H.svg("rect", {x: L + i * bw + 1, y: mid, width: Math.max(1, bw - 2), height: dep[i] * scale, class: "bar-dep"}),
               H.svg("rect", {x: L + i * bw, y: T, width: bw, height: Ht - T - B, class: "hit"}));
      g.append(H.svg("title", {text: `${hhmm(t)}: ${arr[i]} arrived, ${dep[i]} departed`}));
      root.append(g);
      if (i % 10 === 0) root.append(H.svg("text", {class: "axis", x: L + i * bw, y: Ht - 6, text: hhmm(t)}));
    }
    box.replaceChildren(root);
  }

  // Arrivals and departures in the last minute, live (the chart's buckets come every 30 s).
  const recent = [];
  function flowTiles() {
    const now = Date.now();
    while (recent.length && now - recent[0][0] > 60000) recent.shift();
    $("t-arrivals").textContent = String(recent.filter((r) => r[1] === "arrived").length);
    $("t-departures").textContent = String(recent.filter((r) => r[1] === "departed").length);
  }

  async function loadTimeline() {
    const response = await fetch("/api/timeline", {credentials: "same-origin"}).catch(() => null);
    if (!response || !response.ok) return;
    series = await response.json();
    drawPresent();
    drawFlow();
  }

  function renderNow() {
    const entries = [...present.values()];
    const by = {immediate: 0, near: 0, far: 0};
    const rooms = new Map();
    for (const e of entries) {
      by[e.zone] = (by[e.zone] || 0) + 1;
      if (e.room) rooms.set(e.room, (rooms.get(e.room) || 0) + 1);
    }
    $("t-present").textContent = String(entries.length);
    $("t-close").textContent = String(by.immediate + by.near);
    $("t-far").textContent = String(by.far);
    $("rooms-card").hidden = role !== "venue" && rooms.size === 0;
    $("rooms").replaceChildren(...[...rooms.entries()].sort((a, b) => b[1] - a[1]).map(([room, n]) =>
      H.el("tr", {}, H.el("td", {text: room}), H.el("td", {class: "num", text: String(n)}))));
    entries.sort((a, b) => ZONES.indexOf(a.zone) - ZONES.indexOf(b.zone) ||
      String(a.contact.name || a.contact.id).localeCompare(String(b.contact.name || b.contact.id)));
    $("present").replaceChildren(...entries.slice(0, 200).map((e) => H.el("tr", {"data-id": e.contact.id},
      H.el("td", {}, e.contact.name || e.contact.id, ...profileLinks(e.contact.handles)),
      H.el("td", {class: "hide-narrow", text: e.contact.org || ""}),
      H.el("td", {}, H.el("span", {class: `zone-dot c-${e.zone}`}), e.room ? `${e.zone} · ${e.room}` : e.zone),
      H.el("td", {class: "num hide-narrow", text: e.distance_m === undefined ? "" : `${Number(e.distance_m).toFixed(1)} m`}),
      H.el("td", {class: "num", text: H.clock(e.since)}))));
    $("events").replaceChildren(...feed.slice(-80).reverse().map((ev) => {
      const who = ev.contact.name || ev.contact.id;
      let text = `${who} ${ev.type}`;
      if (ev.type === "zone") text = `${who} → ${ev.zone}`;
      if (ev.type === "moved") text = `${who} → ${ev.room}`;
      if (ev.type === "departed") text = `${who} left (${ev.reason})`;
      const revoked = ev.reason === "revoked" || ev.type === "revoked";
      if (revoked) text = "a contact was revoked: everything about them is gone";
      return H.el("li", {class: revoked ? "revoked" : ""},
        H.el("time", {text: H.clock(ev.ts)}), H.el("span", {text: text}));
    }));
  }

  // The handles a person shares, as links to their profiles.
  function profileLinks(handles) {
    const urls = {linkedin: "https://www.linkedin.com/in/", twitter: "https://x.com/", x: "https://x.com/"};
    return Object.entries(handles || {}).flatMap(([service, handle]) => {
      const h = String(handle).replace(/^@/, "");
      const url = h.startsWith("https://") ? h : (urls[service] && !h.includes("/") ? urls[service] + h : null);
      return url ? [" ", H.el("a", {href: url, rel: "noopener noreferrer", target: "_blank", class: "muted", text: service})] : [];
    });
  }

  function pill(text, level) { return H.el("span", {class: `pill ${level}`, text}); }

  function renderStatus(m) {
    const s = m.status;
    const box = $("scanners");
    const figures = (pairs) => H.el("div", {class: "figures"},
      ...pairs.map(([label, value]) => H.el("div", {}, H.el("b", {text: String(value)}), H.el("span", {text: label}))));
    const problems = m.problems.length
      ? H.el("ul", {class: "problems"}, ...m.problems.map((p) => H.el("li", {text: p})))
      : H.el("p", {class: "ok", text: "no problems"});
    if (s.role === "venue") {
      const online = s.scanners_online || [], offline = s.scanners_offline || [];
      box.replaceChildren(
        H.el("div", {class: "scanner"},
          H.el("div", {class: "scanner-head"}, H.el("strong", {text: `venue ${s.venue}`}),
               pill(s.broker_connected ? "broker connected" : "broker unreachable", s.broker_connected ? "" : "bad")),
          figures([["scanners online", online.length], ["offline", offline.length], ["present", s.present], ["subscribers", s.subscribers]]),
          problems),
        ...online.map((name) => H.el("div", {class: "scanner"}, H.el("div", {class: "scanner-head"}, H.el("strong", {text: name}), pill("online", "")))),
        ...offline.map((name) => H.el("div", {class: "scanner"}, H.el("div", {class: "scanner-head"}, H.el("strong", {text: name}), pill("offline", "bad")))));
    } else {
      const state = s.source_state;
      const level = state === "scanning" ? (m.problems.length ? "warn" : "") : (state === "failed" || state === "stopped" ? "bad" : "warn");
      box.replaceChildren(H.el("div", {class: "scanner", "data-scanner": s.scanner},
        H.el("div", {class: "scanner-head"}, H.el("strong", {text: s.scanner}), pill(state, level),
             H.el("span", {class: "muted", text: `source ${s.source}`})),
        figures([["advertisements/s", s.advertisements_per_s], ["dropped", s.dropped],
                 ["subscribers", s.subscribers + (m.web ? m.web.streams : 0)], ["present", s.present]]),
        s.last_error ? H.el("p", {class: "muted", text: `last error: ${s.last_error}`}) : null,
        problems));
    }
    $("t-revoked").textContent = m.revoked === null || m.revoked === undefined ? "–" : String(m.revoked);
  }

  function apply(ev) {
    const id = ev.contact.id;
    // A tombstone ("revoked": consent ended) carries only the id, like a revoked departure.
    const revoked = ev.reason === "revoked" || ev.type === "revoked";
    if (ev.type === "departed" || ev.type === "revoked") present.delete(id);
    else if (ev.type === "arrived" || ev.type === "zone" || ev.type === "moved") {
      const old = present.get(id);
      present.set(id, {contact: ev.contact, zone: ev.zone, distance_m: ev.distance_m, rssi: ev.rssi,
                       since: old ? old.since : ev.ts, room: ev.room || (old && old.room)});
    }
    if (ev.type !== "zone") feed.push(ev);
    if (feed.length > 400) feed = feed.slice(-200);
    if (revoked) {  // forget everything shown about a revoked person
      feed = feed.filter((f) => f.contact.id !== id || f === ev);
    }
  }

  function onMessage(m) {
    if (m.type === "status") { renderStatus(m); return; }
    if (m.type === "snapshot") {
      role = m.role || role;
      if (m.resync) feed = [];
      const history = m.history || [];
      const newest = history.length ? history[history.length - 1].ts : 0;
      for (const ev of history) {
        if (!seqs.apply(ev.seq)) continue;
        if (ev.type !== "zone") feed.push(ev);
        if ((ev.type === "arrived" || ev.type === "departed") && newest - ev.ts < 60) {
          recent.push([Date.now() - (newest - ev.ts) * 1000, ev.type]);
        }
      }
      recent.sort((a, b) => a[0] - b[0]);
      flowTiles();
      present.clear();
      for (const e of m.present) present.set(e.contact.id, e);
      if (m.resync || seqs.last === null || m.seq > seqs.last) seqs.reset(m.seq);
      renderNow();
      loadTimeline();
      return;
    }
    if (m.seq === undefined || !seqs.apply(m.seq)) return;
    apply(m);
    if (m.type === "arrived" || m.type === "departed") { recent.push([Date.now(), m.type]); flowTiles(); }
    renderNow();
  }

  function signedOut() {
    present.clear(); feed = []; series = null;
    if (timer) clearInterval(timer);
    $("app").hidden = true;
    $("present").replaceChildren(); $("events").replaceChildren();
    $("chart-present").replaceChildren(); $("chart-flow").replaceChildren();
    H.showSignIn($("signin-root"), "dashboard", start);
  }

  function start(session) {
    if (!H.gate(session, "dashboard", $("signin-root"), start)) return;
    $("signin-root").replaceChildren();
    $("app").hidden = false;
    role = session.role;
    $("to-enroll").hidden = !(session.enroll_available && session.access.pages.includes("enroll"));
    $("chart-title").textContent = "Present over the last hours, by zone";
    drawPresent();
    H.stream("dashboard", {message: onMessage, state: H.setState, signedOut});
    timer = setInterval(loadTimeline, 30000);
    setInterval(flowTiles, 1000);
  }

  H.boot(start, signedOut);
})();
