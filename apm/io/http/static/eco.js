// Smart eco on the device's page: each car's plan over the price chart, its request (on/off, departure,
// energy) and the plan's cost against charging at once. Fed by app.js's "apm:state" event; uses its
// helpers ($, esc, fmt). Inline SVG, no library: the Pi may be offline.
"use strict";
const ECO_COLOURS = ["#2f7de1", "#9333ea", "#0d9488", "#db2777"];
const ecoSeen = {}; // per car: the request last written into its form (the owner's typing is not overwritten)
// Times as the device plans them (Oslo), whatever the phone's own zone: a departure typed in the form is Oslo time.
const ECO_TZ = "Europe/Oslo";

function ecoClock(t, more = {}) {
  return new Date(t * 1000).toLocaleString("en-GB", { timeZone: ECO_TZ, hour: "2-digit", minute: "2-digit", hour12: false, ...more });
}

function ecoChart(e) {
  const svg = $("eco-chart"), p = e.prices;
  const W = Math.max(280, Math.round(svg.clientWidth || 600)), H = 170, top = 8, base = 118, lane = 14;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  if (!p.length) {
    svg.innerHTML = `<text x="8" y="40" class="eco-axis">${esc(e.prices_error || "no prices")}</text>`;
    return;
  }
  const t0 = p[0][0], t1 = p[p.length - 1][1], x = (t) => (W * (t - t0)) / (t1 - t0);
  const hi = Math.max(0.01, ...p.map((s) => s[2] + s[3])), lo = Math.min(0, ...p.map((s) => s[2] + s[3]));
  const y = (v) => top + ((base - top) * (hi - v)) / (hi - lo);
  const planned = new Set();
  e.cars.forEach((c) => c.slots.forEach((s) => planned.add(s[0])));
  const parts = [];
  for (const s of p) { // one bar per price slot: 96 a day with 15-minute prices
    const v = s[2] + s[3], x0 = x(s[0]), w = Math.max(0.5, x(s[1]) - x0 - (x(s[1]) - x0 > 3 ? 1 : 0));
    parts.push(`<rect class="${planned.has(s[0]) ? "eco-on" : "eco-off"}" x="${x0.toFixed(1)}" width="${w.toFixed(1)}"`
      + ` y="${Math.min(y(v), y(0)).toFixed(1)}" height="${Math.abs(y(0) - y(v)).toFixed(1)}"><title>`
      + `${ecoClock(s[0])} ${(100 * v).toFixed(1)} øre/kWh</title></rect>`);
  }
  // Hour ticks every 3 h, the price scale's top, now.
  for (let t = Math.ceil(t0 / 10800) * 10800; t < t1; t += 10800) {
    parts.push(`<line class="eco-tick" x1="${x(t)}" x2="${x(t)}" y1="${top}" y2="${base}"/>`
      + `<text class="eco-axis" x="${x(t) + 2}" y="${H - 2}">${ecoClock(t)}</text>`);
  }
  parts.push(`<text class="eco-axis" x="2" y="${top + 10}">${(100 * hi).toFixed(0)} øre</text>`);
  if (e.now >= t0 && e.now <= t1) parts.push(`<line class="eco-now" x1="${x(e.now)}" x2="${x(e.now)}" y1="0" y2="${base + lane * 2}"/>`);
  // Per car a lane under the bars: the slots its plan charges in, and its departure.
  e.cars.forEach((c, i) => {
    const yy = base + 4 + i * lane, colour = ECO_COLOURS[i % ECO_COLOURS.length];
    for (const s of c.slots) {
      parts.push(`<rect x="${x(s[0]).toFixed(1)}" width="${Math.max(1, x(s[1]) - x(s[0])).toFixed(1)}" y="${yy}" height="${lane - 4}"`
        + ` fill="${colour}"><title>${esc(c.id)} ${ecoClock(s[0])}: ${s[2]} A, ${s[3]} kWh</title></rect>`);
    }
    if (c.on) {
      const d = Date.parse(c.departure) / 1000;
      if (d <= t1) parts.push(`<line x1="${x(d)}" x2="${x(d)}" y1="${top}" y2="${yy + lane - 4}" stroke="${colour}" stroke-dasharray="3 3"/>`);
    }
  });
  svg.innerHTML = parts.join("");
  const n = p.length, mins = Math.round((p[0][1] - p[0][0]) / 60);
  $("eco-span").textContent = `· ${n} slots of ${mins} min · ${e.area || ""} spot + grid energy charge`;
}

function ecoCarCard(c, i) {
  const div = document.createElement("div");
  div.className = "eco-car";
  div.id = `eco-${c.id}`;
  div.innerHTML = `<h3><span><i class="sw" style="background:${ECO_COLOURS[i % ECO_COLOURS.length]}"></i>${esc(c.id)}</span>
      <span class="dim" id="eco-status-${c.id}"></span></h3>
    <p class="eco-cost" id="eco-cost-${c.id}"></p>
    <form class="max eco-form" id="eco-form-${c.id}">
      <label><input type="checkbox" id="eco-on-${c.id}"> Smart eco (all cars)</label>
      <label>leave <input type="time" id="eco-dep-${c.id}" value="07:00"></label>
      <label><input type="number" id="eco-kwh-${c.id}" step="any" inputmode="decimal" value="20"> kWh</label>
      <button type="submit" id="eco-save-${c.id}">Save</button><span class="msg" id="eco-msg-${c.id}"></span></form>`;
  div.querySelector("form").addEventListener("submit", (ev) => { ev.preventDefault(); ecoSave(c.id); });
  return div;
}

async function ecoSave(id) {
  const msg = $(`eco-msg-${id}`), on = $(`eco-on-${id}`).checked;
  const body = on ? { on, departure: $(`eco-dep-${id}`).value, energy_kwh: Number($(`eco-kwh-${id}`).value) } : { on };
  msg.className = "msg";
  msg.textContent = "saving…";
  try {
    const r = await fetch(`/api/eco/${encodeURIComponent(id)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
    msg.className = r.ok ? "msg ok" : "msg err";
    msg.textContent = r.ok ? (on ? `planned: leave ${body.departure}, ${body.energy_kwh} kWh` : "eco off") : answer.error;
    if (r.ok) delete ecoSeen[id]; // the next state writes the planner's view into the form
  } catch (err) {
    msg.className = "msg err";
    msg.textContent = String(err);
  }
}

function ecoForm(c) {
  const key = `${c.on}|${c.departure}|${c.energy_kwh}`, form = $(`eco-form-${c.id}`);
  if (ecoSeen[c.id] === key || form.contains(document.activeElement)) return;
  ecoSeen[c.id] = key;
  $(`eco-on-${c.id}`).checked = c.on;
  if (c.on) {
    $(`eco-dep-${c.id}`).value = ecoClock(Date.parse(c.departure) / 1000);
    if (c.energy_kwh !== null) $(`eco-kwh-${c.id}`).value = c.energy_kwh;
  }
}

function ecoCar(c, e) {
  let status = "eco off: charges at once";
  if (c.on) {
    const by = ecoClock(Date.parse(c.departure) / 1000, { weekday: "short" });
    status = `leaves ${by} · ${fmt(c.energy_kwh, 1, " kWh")}`;
  }
  $(`eco-status-${c.id}`).textContent = status;
  let cost = "";
  if (c.on && c.cost_nok !== null) {
    const saves = c.at_once_nok === null ? null : c.at_once_nok - c.cost_nok;
    cost = `plan ${fmt(c.cost_nok, 2, " kr")} · at once ${fmt(c.at_once_nok, 2, " kr")}`
      + (saves === null ? "" : ` · saves ${fmt(saves, 2, " kr")}`)
      + ` · ${c.slots.length} slots, ${fmt(c.planned_kwh, 1, " kWh")}` + (c.feasible ? "" : ` · ${c.reason}`);
  }
  $(`eco-cost-${c.id}`).textContent = cost;
  $(`eco-cost-${c.id}`).className = c.feasible === false ? "eco-cost err" : "eco-cost";
  ecoForm(c);
}

function showEco(s) {
  const e = s.eco, card = $("eco-card");
  if (!card) return;
  if (!e) {
    $("eco-state").textContent = "· off: no price source (--prices FILE or --price-api [SERVICE])";
    return;
  }
  const on = e.cars.filter((c) => c.on).length;
  $("eco-state").textContent = on ? `· on for ${on} of ${e.cars.length}` : "· no car asks for it";
  ecoChart(e);
  const box = $("eco-cars");
  e.cars.forEach((c, i) => {
    if (!$(`eco-${c.id}`)) box.appendChild(ecoCarCard(c, i));
    ecoCar(c, e);
  });
  $("eco-notes").textContent = [...e.notes, ...e.errors].join(" · ");
}

document.addEventListener("apm:state", (ev) => showEco(ev.detail));
