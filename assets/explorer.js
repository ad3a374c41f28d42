// Clicking a token anywhere (a text chip or a point of a plot) selects it everywhere: the position goes into
// the hidden #selected-pos box, whose input event the server handles.
(() => {
  function select(pos) {
    const box = document.querySelector("#selected-pos textarea, #selected-pos input");
    if (!box || pos === undefined || pos === null || Number.isNaN(Number(pos))) return;
    box.value = String(pos);
    box.dispatchEvent(new Event("input", { bubbles: true }));
  }
  document.addEventListener("click", (event) => {
    const chip = event.target.closest && event.target.closest(".tok[data-pos]");
    if (chip) select(chip.dataset.pos);
  });
  // plots: a point whose customdata starts with a position selects it (see explorer/views: `position` customdata)
  function bind(plot) {
    if (plot.__explorerBound || !plot.on) return;
    plot.__explorerBound = true;
    plot.on("plotly_click", (data) => {
      const point = data && data.points && data.points[0];
      if (!point || !point.data || point.data.meta !== "position") return;
      const cd = Array.isArray(point.customdata) ? point.customdata[0] : point.customdata;
      select(cd);
    });
  }
  new MutationObserver(() => document.querySelectorAll(".js-plotly-plot").forEach(bind))
    .observe(document.documentElement, { childList: true, subtree: true });
})();
