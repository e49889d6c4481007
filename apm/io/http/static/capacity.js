// The capacity guard's card: this month's counted peaks, the step they put the house in, and how many kWh
// this hour may still use (snapshot key "capacity"; null when [capacity] is off). Loaded after app.js: it
// wraps app.js's show() so that the one EventSource feeds this card too.
"use strict";
(function () {
  const kwh = (v) => fmt(v, 2, " kWh");
  function step(st) {
    return st.to_kw === null ? `above ${st.from_kw} kW` : `${st.from_kw}–${st.to_kw} kW`;
  }
  function capacity(s) {
    const c = s.capacity, card = $("capacity-card");
    card.hidden = !c;
    if (!c) return;
    $("capacity-month").textContent = c.month;
    const peaks = c.peaks.map((p) => `${p.day.slice(8)}.: ${p.kwh.toFixed(2)}`).join(" · ");
    const caps = Object.entries(c.caps_a).map(([id, a]) => `${id} ${a} A`).join(", ");
    dl($("capacity"), [
      ["Peaks that count", peaks ? `${peaks} kWh` : "none yet"],
      ["Average", `${fmt(c.figure_kw, 2, " kW")}: step ${step(c.step)} (${c.step.nok_per_month} NOK/month)`],
      ["Goal", `stay at or under ${c.goal_kw} kW`],
      ["This hour", `${kwh(c.hour_used_kwh)} used of ${kwh(c.hour_cap_kwh)}`],
      ["Still allowed", kwh(c.hour_left_kwh)],
      ["Chargers may draw", c.chargers_kw === null ? "no limit" : `${fmt(c.chargers_kw, 2, " kW")} on average`
        + (caps ? ` (${caps})` : "")],
    ]);
  }
  const base = show;
  show = function (s) { base(s); if (!s.error) capacity(s); };  // eslint-disable-line no-global-assign
})();
