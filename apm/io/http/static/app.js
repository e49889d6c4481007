// The device's page: one EventSource (/events), the DOM updated in place; no framework, no build step.
"use strict";
const $ = (id) => document.getElementById(id);
const fmt = (v, d = 1, unit = "") => (v === null || v === undefined ? "–" : v.toFixed(d) + unit);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["var(--l1)", "var(--l2)", "var(--l3)"];

function dl(el, rows) {
  el.innerHTML = rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
}

function lines(s) {
  const box = $("lines");
  const scale = Math.max(s.grid.fuse_a * 1.1, ...s.lines.map((l) => l.current_a || 0));
  const pct = (a) => `${Math.max(0, Math.min(100, (100 * (a || 0)) / scale)).toFixed(2)}%`;
  const limit = s.headroom ? s.headroom.limit_a : s.grid.fuse_a - s.grid.margin_a;
  if (!box.children.length) {
    box.innerHTML = s.lines.map((l) => `<div class="line"><b>${l.name}</b>
      <div class="bar"><i class="house" id="house-${l.name}"></i><i class="own" id="own-${l.name}"></i>
      <i class="limit" id="limit-${l.name}"></i></div>
      <div class="num"><span class="cur" id="cur-${l.name}">–</span><br><span class="dim" id="free-${l.name}"></span></div></div>`).join("");
  }
  for (const l of s.lines) {
    // The bar is the line's measured current: our chargers' part of it, the rest the household's.
    const total = l.current_a ?? l.measured_a ?? 0, own = Math.min(l.own_a ?? 0, total), house = total - own;
    Object.assign($(`house-${l.name}`).style, { left: "0", width: pct(house) });
    Object.assign($(`own-${l.name}`).style, { left: pct(house), width: pct(own) });
    $(`limit-${l.name}`).style.left = pct(limit);
    $(`cur-${l.name}`).textContent = fmt(l.current_a, 1, " A");
    $(`free-${l.name}`).textContent = l.available_a === undefined || l.available_a === null
      ? (l.current_a === null ? "not reported" : "")
      : `${fmt(l.available_a, 1)} A free`;
  }
  $("fuse").textContent = `${s.grid.fuse_a} A ${s.grid.network} · limit ${fmt(limit, 1, " A")}`;
  const h = s.headroom;
  $("headroom-state").textContent = h ? `· ${h.fresh ? "fresh" : "STALE"} · ${h.reason}` : "· no per-phase list yet";
}

function plot(s) {
  const svg = $("plot"), W = 600, H = 140, span = 600;
  const top = Math.max(s.grid.fuse_a, ...s.history.flatMap((p) => p.slice(1).map((v) => v || 0))) * 1.05;
  const x = (t) => (W * (t + span)) / span, y = (a) => H - (H * a) / top;
  const parts = [];
  const limit = s.headroom ? s.headroom.limit_a : s.grid.fuse_a - s.grid.margin_a;
  parts.push(`<line x1="0" x2="${W}" y1="${y(s.grid.fuse_a)}" y2="${y(s.grid.fuse_a)}" stroke="#9aa3ad" stroke-dasharray="4 4"/>`);
  parts.push(`<line x1="0" x2="${W}" y1="${y(limit)}" y2="${y(limit)}" stroke="var(--limit)" stroke-width="1.5"/>`);
  for (let k = 0; k < 3; k++) {
    const pts = s.history.filter((p) => p[k + 1] !== null).map((p) => `${x(p[0]).toFixed(1)},${y(p[k + 1]).toFixed(1)}`);
    if (pts.length > 1) parts.push(`<polyline fill="none" stroke="${COLOURS[k]}" stroke-width="2" vector-effect="non-scaling-stroke" points="${pts.join(" ")}"/>`);
  }
  svg.innerHTML = parts.join("");
  svg.setAttribute("xmlns", SVG);
  const first = s.history.length ? -s.history[0][0] : 0;
  $("plot-span").textContent = `· last ${Math.max(1, Math.round(first / 60))} min · dashed: fuse ${s.grid.fuse_a} A`;
}

function chargerCard(c) {
  const div = document.createElement("div");
  div.className = "charger";
  div.id = `charger-${c.id}`;
  div.innerHTML = `<h3>${esc(c.id)} <span id="proto-${c.id}"></span></h3>
    <div><span class="setpoint" id="sp-${c.id}">–</span> <span class="dim" id="why-${c.id}"></span></div>
    <dl id="info-${c.id}"></dl>
    <form class="max" id="form-${c.id}"><label for="max-${c.id}">Max current</label>
      <input id="max-${c.id}" type="number" step="1" inputmode="decimal" value="${c.max_a}"> A
      <button type="submit" id="save-${c.id}">Save</button><span class="dim" id="cap-${c.id}"></span><span class="msg" id="msg-${c.id}"></span></form>`;
  div.querySelector("form").addEventListener("submit", (ev) => { ev.preventDefault(); saveMax(c.id); });
  return div;
}

async function saveMax(id) {
  const msg = $(`msg-${id}`), value = Number($(`max-${id}`).value);
  msg.className = "msg";
  msg.textContent = "saving…";
  try {
    const r = await fetch(`/api/chargers/${encodeURIComponent(id)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ max_a: value }),
    });
    const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    msg.className = r.ok ? "msg ok" : "msg err";
    msg.textContent = r.ok ? `saved: ${value} A` : body.error;
  } catch (e) {
    msg.className = "msg err";
    msg.textContent = String(e);
  }
}

// A charging session: its energy, since when and how long; whose meter counted it.
function session(x) {
  if (!x) return "no EV yet";
  const d = Math.round(x.duration_s / 60), h = Math.floor(d / 60);
  const since = new Date(x.started_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const src = x.source === "charger" ? "charger's meter" : "from its currents";
  return `${fmt(x.energy_kwh, 2, " kWh")} · ${h ? `${h} h ` : ""}${d % 60} min from ${since} (${src})`;
}

function chargers(s) {
  const box = $("chargers");
  if (s.chargers.length && box.querySelector("p")) box.innerHTML = "";
  for (const c of s.chargers) {
    if (!$(`charger-${c.id}`)) box.appendChild(chargerCard(c));
    const link = c.connected === null ? "" : c.connected ? " · connected" : " · NOT connected";
    $(`proto-${c.id}`).textContent = `${c.protocol}${link} · ${c.phases}-phase`;
    $(`sp-${c.id}`).textContent = fmt(c.setpoint_a, 1, " A");
    $(`why-${c.id}`).textContent = c.why;
    dl($(`info-${c.id}`), [
      ["State", c.mode + (c.report_age_s === null ? "" : ` (${c.report_age_s} s ago)`)],
      ["EV draws", c.ev_a ? c.ev_a.map((a) => fmt(a, 1)).join(" / ") + " A" : "–"],
      [c.session && !c.session.active ? "Last session" : "Session", session(c.session)],
    ]);
    $(`cap-${c.id}`).textContent = `now ${c.max_a} A`;
  }
}

function device(s) {
  $("serial").textContent = s.serial;
  const han = s.han, lists = Object.entries(han.lists).map(([k, v]) => `list ${k}: ${v}`).join(", ");
  dl($("han"), [
    ["State", han.state], ["Meter", [han.meter, han.meter_type].filter(Boolean).join(" ") || "not yet known"],
    ["Meter id", han.meter_id || "–"], ["Lists", lists || "none yet"],
    ["Last frame", han.last_frame_age_s === null ? "–" : `${han.last_frame_age_s} s ago`],
    ["Errors", `${han.errors}` + (han.last_problem ? ` (last: ${han.last_problem})` : "")],
    ["Import", `${fmt(s.power_w, 0, " W")} · ${fmt(s.energy_kwh, 2, " kWh")}`],
  ]);
  const b = s.broker, sub = s.subscription;
  dl($("device"), [
    ["Broker", `${b.url} · ${b.connected ? "connected" : "NOT connected"}` + (b.last_error && !b.connected ? ` (${b.last_error})` : "")],
    ["Records waiting", `${b.records_pending}`],
    ["Subscription", sub ? `${sub.state} (${sub.reason})` : "–"],
    ["Balancer", `${s.balancer.mode || "–"} · ${s.balancer.setpoints_sent} setpoints sent`],
    ["Settings", s.settings.stored_in ? `stored in ${s.settings.stored_in}` : "this run only (no flash image)"],
  ]);
  $("advice").innerHTML = s.advice.map((a) => `<li>${esc(a)}</li>`).join("");
}

function show(s) {
  if (s.error) return;
  lines(s);
  plot(s);
  chargers(s);
  device(s);
  document.dispatchEvent(new CustomEvent("apm:state", { detail: s })); // sections in their own files (eco.js)
}

function connect() {
  const live = $("live"), events = new EventSource("/events");
  events.onopen = () => { live.textContent = "live"; live.className = "pill"; };
  events.onerror = () => { live.textContent = "reconnecting"; live.className = "pill off"; };
  events.onmessage = (m) => show(JSON.parse(m.data));
}
connect();
