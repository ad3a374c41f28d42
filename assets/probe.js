// The Probe tab's page side: a click on a cell of the patching map asks the server for that patched run, through the
// hidden #probe-patch-pick textbox, whose input event the tab answers (probe_tab.py), as #attn-pick's is.
(() => {
  function request(what) {
    const box = document.querySelector("#probe-patch-pick textarea, #probe-patch-pick input");
    if (!box) return;
    box.value = `${what}:${Date.now()}`;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    box.dispatchEvent(new KeyboardEvent("keypress", { bubbles: true, key: "a" }));
  }

  function bind(plot) {
    if (plot.__probeBound || !plot.on) return;
    plot.__probeBound = true;
    plot.on("plotly_click", (data) => {
      const point = data && data.points && data.points[0];
      if (!point || !point.data || point.data.meta !== "patch-cell") return;
      request(`cell:${Math.round(point.y)}:${Math.round(point.x)}`);
    });
  }

  new MutationObserver(() => {
    const plot = document.querySelector("#probe-patch-map .js-plotly-plot");
    if (plot) bind(plot);
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
