// Clicking a token anywhere (a text chip or a point of a plot) selects it everywhere: the position goes into
// window.__explorerPos and a click on the hidden #select-token button, whose event reads it (see blocks.py).
(() => {
  function select(pos) {
    const button = document.querySelector("#select-token");
    if (!button || pos === undefined || pos === null || Number.isNaN(Number(pos))) return;
    window.__explorerPos = Number(pos);
    button.click();
  }
  document.addEventListener("click", (event) => {
    const chip = event.target.closest && event.target.closest(".tok[data-pos]");
    if (chip) select(chip.dataset.pos);
  });
  // plots: a trace whose meta is "x-position" has token positions on x; "position": first entry of customdata
  function bind(plot) {
    if (plot.__explorerBound || !plot.on) return;
    plot.__explorerBound = true;
    plot.on("plotly_click", (data) => {
      const point = data && data.points && data.points[0];
      const meta = point && point.data && point.data.meta;
      if (meta === "x-position") select(point.x);
      if (meta === "position") select(Array.isArray(point.customdata) ? point.customdata[0] : point.customdata);
    });
  }
  new MutationObserver(() => document.querySelectorAll(".js-plotly-plot").forEach(bind))
    .observe(document.documentElement, { childList: true, subtree: true });
})();
