// The Probe tab's page side. A click on a cell of the patching map asks the server for that patched run, through the
// hidden #probe-patch-pick textbox; a click on the ablation picker (heads, experts, or a layer's attention / MLP)
// ablates or restores that part, through #probe-ablate-pick. The tab answers their input events (probe_tab.py), as
// the Attention tab answers #attn-pick's.
(() => {
  function request(boxId, what) {
    const box = document.querySelector(`#${boxId} textarea, #${boxId} input`);
    if (!box) return;
    box.value = `${what}:${Date.now()}`;
    box.dispatchEvent(new Event("input", { bubbles: true }));
    box.dispatchEvent(new KeyboardEvent("keypress", { bubbles: true, key: "a" }));
  }

  function bindPatchMap(plot) {
    plot.on("plotly_click", (data) => {
      const point = data && data.points && data.points[0];
      if (!point || !point.data || point.data.meta !== "patch-cell") return;
      request("probe-patch-pick", `cell:${Math.round(point.y)}:${Math.round(point.x)}`);
    });
  }

  function bindPicker(plot) {
    plot.on("plotly_click", (data) => {
      const point = data && data.points && data.points[0];
      const meta = point && point.data && point.data.meta;
      if (typeof meta !== "string" || !meta.startsWith("pick-") || !point.customdata) return;
      // customdata[0] is the layer (the rows of the experts' grid are the MoE layers only), x the column
      request("probe-ablate-pick", `${meta.slice(5)}:${point.customdata[0]}:${Math.round(point.x)}`);
    });
  }

  const plots = { "probe-patch-map": bindPatchMap, "probe-pick-map": bindPicker };
  new MutationObserver(() => {
    for (const [id, bind] of Object.entries(plots)) {
      const plot = document.querySelector(`#${id} .js-plotly-plot`);
      if (plot && plot.on && !plot.__probeBound) {
        plot.__probeBound = true;
        bind(plot);
      }
    }
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
