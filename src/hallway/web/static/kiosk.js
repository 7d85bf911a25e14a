// The kiosk: who is here now, by zone; arrivals and departures; a greeting at the booth.
// Only people who agreed to be shown ever reach this page; everyone else is a count.
"use strict";

(() => {
  const FEED_LINES = 12;
  const ROOM_MAX = 20;
  const CLOSE_MAX = 7;
  const GREET_S = 12;
  const people = new Map();       // id -> person {id, name, org, title, tags, zone, since}
  let hidden = {close: 0, room: 0};
  let feedItems = [];
  const greetQueue = [];
  let greeting = false;
  const seqs = H.tracker();

  const group = (zone) => (zone === "immediate" || zone === "near") ? "close" : "room";

  function card(p) {
    const avatar = H.el("span", {class: "avatar", "aria-hidden": "true", text: H.initials(p.name)});
    avatar.style.setProperty("--hue", H.hue(p.id));
    const sub = [p.title, p.org].filter(Boolean).join(" · ");
    const tags = (p.tags || []).slice(0, 4).map((t) => H.el("span", {class: "tag", text: t}));
    // Close by, someone can scan the person's profile link to connect.
    const qr = p.connect && group(p.zone) === "close"
      ? H.el("img", {class: "connect", src: p.connect, alt: `${p.links[0].service} profile`}) : null;
    return H.el("li", {class: `person zone-${p.zone}`, "data-id": p.id},
      avatar,
      H.el("span", {class: "who"},
        H.el("span", {class: "name", text: p.name}),
        sub ? H.el("span", {class: "org", text: sub}) : null,
        tags.length ? H.el("span", {class: "tags"}, ...tags) : null),
      qr);
  }

  function render() {
    for (const g of ["close", "room"]) {
      const list = document.getElementById(`people-${g}`);
      const mine = [...people.values()].filter((p) => group(p.zone) === g)
        .sort((a, b) => (g === "close" && (a.zone === "immediate") !== (b.zone === "immediate"))
          ? (a.zone === "immediate" ? -1 : 1) : a.name.localeCompare(b.name));
      const fits = g === "room" ? ROOM_MAX : CLOSE_MAX;  // a screen read from 3 m never scrolls
      list.replaceChildren(...mine.slice(0, fits).map(card));
      const n = (hidden[g] || 0) + Math.max(0, mine.length - fits);
      const others = document.getElementById(`others-${g}`);
      others.textContent = n === 0 ? "" :
        (mine.length ? `+ ${n} more ${n === 1 ? "person" : "people"}` :
          `${n} ${n === 1 ? "person" : "people"}`);
      if (!mine.length && !n) others.textContent = "nobody yet";
    }
    const total = people.size + (hidden.close || 0) + (hidden.room || 0);
    document.getElementById("count").textContent = String(total);
    document.getElementById("count-label").textContent =
      total === 1 ? "person here now" : "people here now";
    const feed = document.getElementById("feed");
    feed.replaceChildren(...feedItems.slice(-FEED_LINES).reverse().map((item) =>
      H.el("li", {class: `feed-${item.type}`},
        H.el("time", {text: H.clock(item.ts)}),
        H.el("span", {text: item.text}))));
  }

  function feed(item) {
    let text;
    if (item.type === "arrived") text = item.name ? `${item.name} arrived` : "someone arrived";
    else if (item.type === "departed") text = item.name ? `${item.name} left` : "someone left";
    else return;
    feedItems.push({ts: item.ts, type: item.type, text, id: item.name ? item.id : null});
    if (feedItems.length > 200) feedItems = feedItems.slice(-FEED_LINES);
  }

  function nameOf(id) { const p = people.get(id); return p ? p.name : null; }

  function showGreeting(greet) {
    const me = people.get(greet.id);
    if (!me) return;
    const lines = [];
    const names = (ids) => ids.map(nameOf).filter(Boolean);
    const known = names(greet.knows || []);
    if (known.length) lines.push(["You know", known.join(" · ")]);
    for (const [tag, ids] of Object.entries(greet.tags || {})) {
      const n = names(ids);
      if (n.length) lines.push([`Also into ${tag}`, n.join(" · ")]);
    }
    const org = names(greet.org || []);
    if (org.length && me.org) lines.push([`Also from ${me.org}`, org.join(" · ")]);
    if (!lines.length) lines.push(["", "Have a look around: the people listed here are in the room."]);
    const box = document.getElementById("greet");
    box.replaceChildren(
      H.el("p", {class: "greet-hello", text: `Hello, ${me.name}`}),
      ...lines.slice(0, 4).map(([label, value]) => H.el("p", {class: "greet-line"},
        label ? H.el("span", {class: "greet-label", text: label}) : null,
        H.el("span", {class: "greet-names", text: value}))));
    box.dataset.id = greet.id;
    box.hidden = false;
    greeting = true;
    setTimeout(() => {
      box.hidden = true;
      greeting = false;
      if (greetQueue.length) showGreeting(greetQueue.shift());
    }, GREET_S * 1000);
  }

  function greet(g) {
    if (greeting) { if (greetQueue.length < 5) greetQueue.push(g); } else showGreeting(g);
  }

  function dismissGreeting(id) {
    const box = document.getElementById("greet");
    if (!box.hidden && box.dataset.id === id) box.hidden = true;
    for (let i = greetQueue.length - 1; i >= 0; i--) if (greetQueue[i].id === id) greetQueue.splice(i, 1);
  }

  function onMessage(m) {
    if (m.type === "snapshot") {
      if (m.title) { document.getElementById("title").textContent = m.title; document.title = m.title; }
      if (m.resync) { feedItems = []; }
      for (const item of m.history || []) {
        if (seqs.apply(item.seq)) feed(item);
      }
      people.clear();
      for (const p of m.people) people.set(p.id, p);
      hidden = m.hidden;
      if (m.resync || seqs.last === null || m.seq > seqs.last) seqs.reset(m.seq);
      render();
      return;
    }
    if (m.seq === undefined || !seqs.apply(m.seq)) return;
    if (m.hidden) hidden = m.hidden;
    if (m.type === "arrived" || m.type === "zone") {
      people.set(m.person.id, m.person);
      if (m.type === "arrived") feed({ts: m.ts, type: "arrived", id: m.person.id, name: m.person.name});
      if (m.greet) greet(m.greet);
    } else if (m.type === "departed" || m.type === "hide") {
      const p = people.get(m.id);
      people.delete(m.id);
      dismissGreeting(m.id);
      if (m.type === "hide" || m.reason === "revoked") {
        // No longer to be shown, or revoked: forget every line that names them.
        feedItems = feedItems.filter((item) => item.id !== m.id);
        const box = document.getElementById("greet");
        if (p && box.textContent.includes(p.name)) box.hidden = true;
        if (m.reason === "revoked") feed({ts: m.ts, type: "departed"});
      } else {
        feed({ts: m.ts, type: "departed", id: m.id, name: p ? p.name : m.name});
      }
    } else if (m.type === "hidden") {
      if (m.change === "arrived" || m.change === "departed") feed({ts: m.ts, type: m.change});
    }
    render();
  }

  function signedOut() {
    people.clear();
    hidden = {close: 0, room: 0};
    feedItems = [];
    document.getElementById("app").hidden = true;
    document.getElementById("app").querySelectorAll("ul,ol").forEach((n) => n.replaceChildren());
    H.showSignIn(document.getElementById("signin-root"), "kiosk", start);
  }

  function start(session) {
    if (!H.gate(session, "kiosk", document.getElementById("signin-root"), start)) return;
    document.getElementById("signin-root").replaceChildren();
    document.getElementById("app").hidden = false;
    if (session && session.title) document.getElementById("title").textContent = session.title;
    H.stream("kiosk", {message: onMessage, state: H.setState, signedOut});
  }

  H.boot(start, signedOut);
})();
