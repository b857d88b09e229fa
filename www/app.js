// The charger's page: plain JS, no framework. Everything live comes as JSON from /api/ (firmware/web.py);
// /api/events streams the charger's snapshot (Server-Sent Events). Every POST is JSON with the session's CSRF
// token in X-CSRF-Token.
"use strict";
const $ = (id) => document.getElementById(id);
let csrf = null;
let events = null;
let shown = {};   // settings as loaded: only changed ones are sent

async function api(path, body) {
  const opt = body === undefined ? {} : {
    method: "POST", body: JSON.stringify(body),
    headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf || ""}};
  const r = await fetch(path, opt);
  let j = {};
  try { j = await r.json(); } catch (e) { j = {}; }
  if (r.status === 401 && path !== "/api/login") { start(); }
  return [r.status, j];
}

function say(id, text, good) {
  const el = $(id);
  el.textContent = text || "";
  el.className = good ? "ok" : "bad";
}

// ---- logging in -------------------------------------------------------------------------------------------
async function start() {
  const [, s] = await api("/api/session");
  csrf = s.csrf;
  if (s.logged_in) { return openApp(); }
  if (events) { events.close(); events = null; }
  $("app").hidden = true;
  $("logout").hidden = true;
  $("auth").hidden = false;
  const first = !s.password_set;
  $("authtitle").textContent = first ? "Set a password for this page" : "Log in";
  $("authhelp").textContent = first ? "This charger's page has no password yet. Choose one (8-64 characters): " +
    "until then the page offers nothing else." : "";
  $("pw2row").hidden = !first;
  $("pw").autocomplete = first ? "new-password" : "current-password";
  $("authbtn").textContent = first ? "Set password" : "Log in";
  $("authform").dataset.first = first ? "1" : "";
  $("pw").focus();
}

$("authform").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const first = $("authform").dataset.first === "1";
  const pw = $("pw").value;
  if (first && pw !== $("pw2").value) { return say("autherr", "the two passwords differ"); }
  const [code, j] = await api(first ? "/api/password" : "/api/login", {password: pw});
  if (code === 200) {
    $("pw").value = $("pw2").value = "";
    say("autherr", "");
    csrf = j.csrf;
    return openApp();
  }
  say("autherr", j.reason || ("HTTP " + code));
});

$("logout").addEventListener("click", async () => { await api("/api/logout", {}); start(); });

function openApp() {
  $("auth").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  listen();
  loadConfig();
  loadLog();
}

// ---- live status ------------------------------------------------------------------------------------------
function listen() {
  if (events) { events.close(); }
  events = new EventSource("/api/events");
  events.onmessage = (e) => { render(JSON.parse(e.data)); live(true); };
  events.onerror = () => {
    live(false);
    if (events.readyState === 2) { setTimeout(start, 2000); }  // closed for good (a 401): log in again
  };
}

function live(on) {
  const el = $("live");
  el.textContent = on ? "live" : "offline";
  el.className = on ? "pill" : "pill off";
}

const kw = (w) => (w / 1000).toFixed(2) + " kW";
const kwh = (wh) => (wh / 1000).toFixed(3) + " kWh";
const amp = (a) => (a === null || a === undefined) ? "none" : Number(a).toFixed(1) + " A";

function duration(s) {
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, x = s % 60;
  return h + ":" + String(m).padStart(2, "0") + ":" + String(x).padStart(2, "0");
}

function render(s) {
  const st = $("status");
  st.textContent = s.status;
  st.className = "status s-" + s.status;
  $("power").textContent = kw(s.power_w);
  $("energy").textContent = kwh(s.energy_wh);
  $("current").textContent = (s.current_a || []).map((a) => a.toFixed(1)).join(" / ") + " A";
  $("offered").textContent = amp(s.offered_a) + " (max " + amp(s.max_a) + ")";
  $("limit").textContent = amp(s.limit_a);
  $("pilot").textContent = s.pilot + " / " + (s.plugged ? "plugged in" : "not plugged");
  const t = s.session;
  $("session").textContent = t ? (t.id_tag + ": " + kwh(t.energy_wh) + " in " + duration(t.duration_s) +
    (t.transaction_id !== null && t.transaction_id !== undefined ? " (transaction " + t.transaction_id + ")" : "")) :
    "none";
  const l = s.link || {};
  $("link").textContent = l.online ? ("online" + (l.registered ? ", registered" : ", not registered") +
    (l.answer_age_s !== null && l.answer_age_s !== undefined ? ", last answer " + l.answer_age_s + " s ago" : "")) :
    "offline";
  const w = s.wifi || {};
  $("wifi").textContent = w.state + (w.ssid ? " " + w.ssid : "") + (w.ip ? " (" + w.ip + ")" : "") +
    (w.error ? ", " + w.error : "");
  const f = $("fault");
  f.textContent = s.error_code === "NoError" ? "none" : s.error_code + (s.error_info ? ": " + s.error_info : "");
  f.className = s.error_code === "NoError" ? "" : "bad";
  const fw = s.firmware || {};
  $("fwversion").textContent = fw.version || "-";
  $("fwslot").textContent = fw.slot || "-";
  $("fwupdate").textContent = fw.update || "-";
  $("avail").textContent = s.available ? "Operative" : "Inoperative";
}

// ---- commands ---------------------------------------------------------------------------------------------
async function command(path, body) {
  const [code, j] = await api(path, body);
  say("msg", code === 200 ? "done" : (j.reason || ("HTTP " + code)), code === 200);
}

$("start").addEventListener("click", () => command("/api/start", {id_tag: $("tag").value.trim() || null}));
$("stop").addEventListener("click", () => command("/api/stop", {}));
$("setlimit").addEventListener("click", () => {
  const v = $("amps").value.trim();
  if (v === "" || isNaN(Number(v))) { return say("msg", "enter a current in A (0 pauses)"); }
  command("/api/limit", {amps: Number(v)});
});
$("clearlimit").addEventListener("click", () => command("/api/limit", {amps: null}));

// ---- settings ---------------------------------------------------------------------------------------------
async function loadConfig() {
  const [code, j] = await api("/api/config");
  if (code !== 200) { return; }
  const box = $("cfgfields");
  box.textContent = "";
  shown = {};
  for (const k of j.keys) {
    const label = document.createElement("label");
    label.append(k.name + (k.reboot ? " (restart)" : ""));
    let input;
    if (k.choices) {
      input = document.createElement("select");
      for (const c of k.choices) { input.append(new Option(c, c)); }
    } else {
      input = document.createElement("input");
      input.type = k.secret ? "password" : k.type === "bool" ? "checkbox" : k.type === "int" ? "number" : "text";
      if (k.type === "int") { input.min = k.min; input.max = k.max; }
      if (k.type === "str") { input.maxLength = k.max; }
      if (k.secret) {
        input.placeholder = k.set ? "set (blank keeps it)" : "not set";
        input.autocomplete = "new-password";
      }
    }
    input.name = k.name;
    input.id = "cfg-" + k.name;
    if (k.type === "bool") { input.checked = !!k.value; } else if (!k.secret) { input.value = k.value; }
    if (k.name === "ChargeBoxId") { $("cbid").textContent = k.value; }
    shown[k.name] = k.secret ? "" : (k.type === "bool" ? !!k.value : String(k.value));
    const err = document.createElement("span");
    err.className = "err";
    err.id = "cfgerr-" + k.name;
    label.append(input, err);
    box.append(label);
  }
}

$("cfg").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const changed = {};
  for (const el of $("cfgfields").querySelectorAll("input,select")) {
    const v = el.type === "checkbox" ? el.checked : el.value;
    if (v !== shown[el.name]) { changed[el.name] = v; }
    $("cfgerr-" + el.name).textContent = "";
  }
  if (!Object.keys(changed).length) { return say("cfgmsg", "nothing changed", true); }
  const [code, j] = await api("/api/config", changed);
  if (code === 200) {
    say("cfgmsg", j.reboot ? "saved: restart the charger for it to take effect" : "saved", true);
    return loadConfig();
  }
  for (const [name, why] of Object.entries(j.errors || {})) {
    const el = $("cfgerr-" + name);
    if (el) { el.textContent = why; }
  }
  say("cfgmsg", j.reason || ("HTTP " + code));
});

$("pwform").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if ($("newpw").value !== $("newpw2").value) { return say("pwmsg", "the two new passwords differ"); }
  const [code, j] = await api("/api/password", {old: $("oldpw").value, password: $("newpw").value});
  for (const id of ["oldpw", "newpw", "newpw2"]) { $(id).value = ""; }
  if (code === 200) { csrf = j.csrf; }
  say("pwmsg", code === 200 ? "password changed" : (j.reason || ("HTTP " + code)), code === 200);
});

// ---- log --------------------------------------------------------------------------------------------------
async function loadLog() {
  const [code, j] = await api("/api/log");
  if (code === 200) { $("log").textContent = j.lines.join("\n"); }
}
$("logrefresh").addEventListener("click", loadLog);
setInterval(() => { if (!$("app").hidden) { loadLog(); } }, 10000);

start();
