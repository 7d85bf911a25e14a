// Enrollment: add an attendee (phone app or badge), show the phone's code once, import a
// person's network, revoke. The server validates exactly as `hallway contacts import` does.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  let contacts = [];

  function carrier() { return document.querySelector('input[name="carrier"]:checked').value; }

  function showCarrier() {
    const chosen = carrier();
    document.querySelectorAll("[data-carrier]").forEach((n) => { n.hidden = n.dataset.carrier !== chosen; });
  }

  function showCode(body, title) {
    const box = $("result");
    box.replaceChildren(
      H.el("p", {}, H.el("strong", {text: title})),
      H.el("img", {src: body.qr, alt: `enrollment code for ${body.contact.name}`, id: "qr"}),
      H.el("p", {class: "muted", text: "Scan it with the hallway app. It is shown only now."}),
      H.el("code", {text: body.uri}),
      H.el("button", {class: "button secondary small", type: "button", id: "hide-code", text: "Hide the code"}));
    $("hide-code").addEventListener("click", () => box.replaceChildren(H.el("p", {class: "muted", text: "Code hidden."})));
  }

  function form() {
    const f = $("add-form");
    const value = (name) => f.elements[name].value;
    const body = {name: value("name"), id: value("id"), org: value("org"), title: value("title"),
                  tags: value("tags"), knows: value("knows"), display: f.elements.display.checked,
                  carrier: carrier()};
    if (body.carrier === "ibeacon") Object.assign(body, {uuid: value("uuid"), major: value("major"), minor: value("minor")});
    if (body.carrier === "eddystone-uid") Object.assign(body, {namespace: value("namespace"), instance: value("instance")});
    if (body.carrier === "address") body.address = value("address");
    return body;
  }

  async function add(e) {
    e.preventDefault();
    $("form-error").textContent = "";
    const response = await H.post("/api/contacts", form());
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { $("form-error").textContent = body.error || `failed (${response.status})`; return; }
    $("add-form").reset();
    showCarrier();
    if (body.qr) showCode(body, `${body.contact.name} (${body.contact.id})`);
    else $("result").replaceChildren(H.el("p", {text: `${body.contact.name} was added with their badge.`}));
  }

  async function action(id, what) {
    const url = `/api/contacts/${encodeURIComponent(id)}/${what}`;
    const response = await H.post(url, {});
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { $("form-error").textContent = body.error || `failed (${response.status})`; return; }
    if (what === "phone-key") showCode(body, `New phone key for ${body.contact.name}`);
  }

  async function upload(id, file) {
    if (!file) return;
    const response = await fetch(`/api/contacts/${encodeURIComponent(id)}/network`, {
      method: "POST", credentials: "same-origin", body: file,
      headers: {"X-Hallway": "1", "Content-Type": "application/octet-stream", "X-Filename": encodeURIComponent(file.name)},
    });
    const body = await response.json().catch(() => ({}));
    const box = $("result");
    if (!response.ok) { $("form-error").textContent = body.error || `failed (${response.status})`; return; }
    box.replaceChildren(H.el("p", {}, H.el("strong", {text: `Network of ${id}`})),
      H.el("p", {text: `read ${body.read}, matched ${body.matched}, ambiguous ${body.ambiguous}, ignored ${body.ignored}; now knows ${body.knows} enrolled people.`}),
      H.el("p", {class: "muted", text: "The file was read in memory and discarded; only the matches are kept."}));
  }

  function render() {
    $("n-contacts").textContent = String(contacts.length);
    $("ids").replaceChildren(...contacts.map((c) => H.el("option", {value: c.id, label: c.name})));
    $("contacts").replaceChildren(...contacts.map((c) => {
      const revoke = H.el("button", {class: "button danger small", type: "button", "data-revoke": c.id, text: "Revoke"});
      revoke.addEventListener("click", () => { if (confirm(`Revoke ${c.name}? Their keys and events are deleted at once.`)) action(c.id, "revoke"); });
      const key = H.el("button", {class: "button secondary small", type: "button", text: "New phone key"});
      key.addEventListener("click", () => action(c.id, "phone-key"));
      const file = H.el("input", {type: "file", class: "file", "aria-label": `network file of ${c.name}`,
                                  accept: ".csv,.vcf,.zip,.js,.txt"});
      file.addEventListener("change", () => upload(c.id, file.files[0]).finally(() => { file.value = ""; }));
      const pick = H.el("label", {class: "button secondary small hide-narrow", title: "LinkedIn or X export, vCard, CSV"},
                        "Import network…", file);
      return H.el("tr", {"data-id": c.id},
        H.el("td", {text: c.id}), H.el("td", {text: c.name}),
        H.el("td", {class: "hide-narrow", text: c.org || ""}),
        H.el("td", {class: "hide-narrow", text: c.keys.join(", ") || "–"}),
        H.el("td", {class: "hide-narrow", text: c.display ? "yes" : "no"}),
        H.el("td", {}, H.el("span", {class: "muted", text: `knows ${c.knows.length} `}), pick),
        H.el("td", {}, key, " ", revoke));
    }));
  }

  function onMessage(m) {
    if (m.type === "contacts") { contacts = m.contacts; render(); }
  }

  function signedOut() {
    contacts = [];
    $("contacts").replaceChildren();
    $("result").replaceChildren();
    $("app").hidden = true;
    H.showSignIn($("signin-root"), "enrollment page", start);
  }

  function start(session) {
    if (!H.gate(session, "enroll", $("signin-root"), start)) return;
    if (!session.enroll_available) {
      $("signin-root").replaceChildren(H.el("div", {class: "notice"}, H.el("h1", {text: "No enrollment here"}),
        H.el("p", {text: "This server has no contact store of its own (a venue service): enroll people on a scanner's daemon."})));
      return;
    }
    $("signin-root").replaceChildren();
    $("app").hidden = false;
    H.stream("enroll", {message: onMessage, state: H.setState, signedOut});
  }

  document.querySelectorAll('input[name="carrier"]').forEach((n) => n.addEventListener("change", showCarrier));
  $("add-form").addEventListener("submit", add);
  H.boot(start, signedOut);
})();
