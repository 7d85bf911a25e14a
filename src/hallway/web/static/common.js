// hallway pages: sign-in, the live stream, small DOM helpers. No framework, no build step.
"use strict";

const H = (() => {
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Hallway": "1"},
      body: JSON.stringify(body || {}),
    });
  }

  async function session() {
    const response = await fetch("/api/session", {credentials: "same-origin"}).catch(() => null);
    if (!response || !response.ok) return undefined;  // unreachable: not the same as signed out
    const body = await response.json();
    return body.signed_in ? body : null;
  }

  // A token handed over in the fragment (#token=...) never reaches the server in a URL: it is
  // exchanged for a session cookie and removed from the address bar and the history.
  async function signIn() {
    const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
    if (match) {
      history.replaceState(null, "", location.pathname + location.search);
      const response = await post("/api/login", {token: decodeURIComponent(match[1])})
        .catch(() => null);
      if (!response) return undefined;
      if (response.ok) return response.json();
      const body = await response.json().catch(() => ({}));
      signInProblem = body.error || "sign-in failed";
    }
    return session();
  }

  let signInProblem = "";

  function showSignIn(root, page, onSignedIn) {
    root.replaceChildren();
    const input = el("input", {type: "password", id: "token", autocomplete: "off",
                               placeholder: "access token", "aria-label": "access token"});
    const message = el("p", {class: "signin-message", role: "status", text: signInProblem});
    signInProblem = "";
    const form = el("form", {class: "signin", id: "signin-form"},
      el("h1", {text: "hallway"}),
      el("p", {text: `Sign in with an organiser's token to open the ${page}.`}),
      input, el("button", {type: "submit", text: "Sign in"}), message);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const response = await post("/api/login", {token: input.value});
      input.value = "";
      if (response.ok) { onSignedIn(await response.json()); return; }
      const body = await response.json().catch(() => ({}));
      message.textContent = body.error || "sign-in failed";
    });
    root.append(form);
    input.focus();
  }

  // The page's live stream: resumes by seq (the browser sends Last-Event-ID; a stream opened
  // again after a failure asks ?since=), and drops any event it has already applied.
  function stream(page, handlers) {
    let source = null;
    let lastSeq = null;
    let stopped = false;
    function open() {
      if (stopped) return;
      const url = `/api/stream/${page}` + (lastSeq === null ? "" : `?since=${lastSeq}`);
      source = new EventSource(url);
      source.onopen = () => handlers.state("live");
      source.onmessage = (message) => {
        const data = JSON.parse(message.data);
        if (message.lastEventId) lastSeq = Number(message.lastEventId);
        handlers.message(data);
      };
      source.onerror = () => {
        handlers.state("reconnecting");
        if (source.readyState !== EventSource.CLOSED) return;  // the browser retries itself
        setTimeout(async () => {
          const current = await session();
          if (current === null || (current && !current.access.pages.includes(page))) {
            stopped = true;
            handlers.signedOut();
            return;
          }
          open();
        }, 1000);
      };
    }
    open();
    return {close() { stopped = true; if (source) source.close(); }};
  }

  // Every page keeps the seqs it applied (window.hallwayApplied) so a reconnect can be checked
  // to neither lose nor repeat an event.
  // (and when: window.hallwayTimes[seq], wall-clock seconds, for the latency figures).
  function tracker() {
    const applied = [];
    const times = {};
    window.hallwayApplied = applied;
    window.hallwayTimes = times;
    let last = null;
    return {
      apply(seq) {
        if (last !== null && seq <= last) return false;
        last = seq;
        applied.push(seq);
        times[seq] = Date.now() / 1000;
        if (applied.length > 20000) delete times[applied[0]];
        if (applied.length > 20000) applied.splice(0, applied.length - 20000);
        return true;
      },
      reset(seq) { last = seq; },
      get last() { return last; },
    };
  }

  function clock(ts) {
    const d = new Date(ts * 1000);
    return d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", hourCycle: "h23"});
  }

  function hue(text) {
    let h = 0;
    for (const ch of text) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  }

  function initials(name) {
    const parts = name.trim().split(/\s+/).filter(Boolean);
    const first = parts[0] ? parts[0][0] : "?";
    const last = parts.length > 1 ? parts[parts.length - 1][0] : "";
    return (first + last).toUpperCase();
  }

  function setState(state) {
    const dot = document.getElementById("live");
    if (!dot) return;
    dot.dataset.state = state;
    dot.textContent = state === "live" ? "live" : "reconnecting…";
  }

  // A signed-in token that may not open this page: say so, and offer to sign out.
  function gate(session, page, root, onSignedIn) {
    if (session.access.pages.includes(page)) return true;
    const out = el("button", {class: "button", type: "button", text: "Sign in with another token"});
    out.addEventListener("click", async () => {
      await post("/api/logout");
      showSignIn(root, page, onSignedIn);
    });
    root.replaceChildren(el("div", {class: "notice", id: "not-allowed"},
      el("h1", {text: "Not for this token"}),
      el("p", {text: `The token you signed in with may not open the ${page}.`}), out));
    return false;
  }

  // Start a page: signed in -> start; signed out -> the sign-in form; server unreachable ->
  // try again shortly (a kiosk switched on before the daemon).
  function boot(start, signedOut) {
    signIn().then((current) => {
      if (current) start(current);
      else if (current === null) signedOut();
      else setTimeout(() => boot(start, signedOut), 2000);
    });
  }

  return {el, svg, post, gate, boot, session, signIn, showSignIn, stream, tracker, clock, hue, initials,
          setState};
})();
