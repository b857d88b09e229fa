// The first-boot setup form (firmware/websetup.py): the console setup's questions, checked by the same rules.
"use strict";
const $ = (id) => document.getElementById(id);
const LABELS = {
  WifiSsid: "WiFi network name (SSID)", WifiPassword: "WiFi password (empty: an open network)",
  CentralSystemUrl: "Central System URL (ws://... or wss://...)", ChargeBoxId: "Charge box id",
  Password: "Central System password (empty: none)", MeterModel: "Energy meter model",
  Variant: "Connector: socket or fixed cable", MaxCurrent: "Maximum current of the installation (A)",
  WebPassword: "Password for this page (8-64 characters; empty: the page stays off)"};

async function load() {
  const r = await fetch("/api/setup");
  const j = await r.json();
  for (const line of j.report) {
    const li = document.createElement("li");
    li.textContent = "provision.json: " + line;
    $("report").append(li);
  }
  for (const f of j.fields) {
    const label = document.createElement("label");
    label.append(LABELS[f.name] || f.name);
    let input;
    if (f.choices) {
      input = document.createElement("select");
      for (const c of f.choices) { input.append(new Option(c, c)); }
    } else {
      input = document.createElement("input");
      input.type = f.secret ? "password" : f.min !== undefined ? "number" : "text";
      if (f.min !== undefined) { input.min = f.min; input.max = f.max; }
      if (f.secret) { input.autocomplete = "new-password"; }
    }
    input.id = "f-" + f.name;
    input.name = f.name;
    input.required = f.required;
    if (!f.secret && f.value !== undefined && f.value !== null) { input.value = f.value; }
    const err = document.createElement("span");
    err.className = "err";
    err.id = "e-" + f.name;
    label.append(input, err);
    $("fields").append(label);
  }
}

$("setup").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = {keep_wifi: $("keep").checked};
  for (const el of $("fields").querySelectorAll("input,select")) {
    body[el.name] = el.value;
    $("e-" + el.name).textContent = "";
  }
  $("msg").textContent = "checking" + (body.WifiSsid ? " and joining " + body.WifiSsid : "") + " ...";
  $("msg").className = "";
  const r = await fetch("/api/setup", {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify(body)});
  const j = await r.json();
  if (r.status === 200) {
    $("msg").textContent = "Saved. The charger starts now" + (j.ssid ? " and joins " + j.ssid : "") +
      "; this access point closes.";
    $("msg").className = "ok";
    $("save").disabled = true;
    return;
  }
  for (const [name, why] of Object.entries(j.errors || {})) { $("e-" + name).textContent = why; }
  if (r.status === 409) { $("keeprow").hidden = false; }
  $("msg").textContent = j.reason || ("HTTP " + r.status);
  $("msg").className = "bad";
});

load();
