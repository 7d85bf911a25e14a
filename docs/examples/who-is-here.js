// Who of my contacts is here: the web pages' live stream (Server-Sent Events), filtered to the
// contact ids in the fragment (#token=SECRET&contacts=ID,ID) or typed into the text box.
// Served by the daemon itself (web.apps_dir), so it signs in and reads the stream as the
// dashboard does: the token from the fragment is traded for a session cookie.
"use strict";

const present = new Map();  // contact id -> {name, zone}, as the stream says now
const box = document.getElementById("mine");

function wanted() {
  return new Set(box.value.split(/[\s,]+/).filter(Boolean));
}

function show(state) {
  const node = document.getElementById("state");
  node.dataset.state = state;
  node.textContent = state;
}

function render() {
  const mine = wanted();
  const list = document.getElementById("here");
  list.replaceChildren();
  for (const [id, person] of present) {
    if (!mine.has(id)) continue;
    const item = document.createElement("li");
    item.dataset.id = id;
    item.textContent = `${person.name} (${person.zone})`;
    list.append(item);
  }
  document.getElementById("count").textContent =
    `${list.children.length} of ${mine.size} here`;
}

function apply(message) {
  const contact = message.contact;
  if (message.type === "snapshot") {  // the whole present set (first, and after a resync)
    present.clear();
    for (const entry of message.present) {
      present.set(entry.contact.id, {name: entry.contact.name, zone: entry.zone});
    }
  } else if (message.type === "arrived" || message.type === "zone" || message.type === "moved") {
    const before = present.get(contact.id);
    present.set(contact.id, {name: contact.name, zone: message.zone || before?.zone || "?"});
  } else if (message.type === "departed" || message.type === "revoked") {
    present.delete(contact.id);
  } else {
    return;  // status messages and types this page does not know
  }
  render();
}

async function signIn() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (fragment.has("contacts")) box.value = fragment.get("contacts");
  // The token leaves the address bar and the history at once; the contact list stays.
  const keep = box.value ? `#contacts=${encodeURIComponent(box.value)}` : "";
  history.replaceState(null, "", location.pathname + location.search + keep);
  if (token) {
    const response = await fetch("/api/login", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Hallway": "1"},
      body: JSON.stringify({token}),
    });
    if (!response.ok) return false;
  }
  const session = await (await fetch("/api/session", {credentials: "same-origin"})).json();
  return session.signed_in === true;
}

async function main() {
  if (!await signIn()) {
    show("signed out: open this page with #token=SECRET");
    return;
  }
  box.addEventListener("input", render);
  const stream = new EventSource("/api/stream/dashboard");
  stream.onopen = () => show("live");
  stream.onerror = () => show("reconnecting");  // EventSource resumes by Last-Event-ID
  stream.onmessage = (event) => apply(JSON.parse(event.data));
}

main().catch((error) => show(`error: ${error}`));
