// The Attention tab's page side: a click on the layers x heads overview opens that layer and head, and its outline
// follows the layer and head shown; while the overview is still being filled (its layout.meta.pending), ask the
// server for more between generations; the text panel keeps the selected (query) token in view. Requests go through
// the hidden #attn-pick textbox, whose input event renders the tab like any of its controls (attention_tab.py).
(() => {
  const POLL_MS = 150;
  const GIVE_UP_MS = 5000; // a request whose answer never drew the overview stops blocking the next one
  let asked = 0; // when the last "more" went out; 0: none waiting
  let askedOf = null; // the overview's layout when it went out

  function request(what) {
    const box = document.querySelector("#attn-pick textarea, #attn-pick input");
    if (!box) return;
    box.value = `${what}:${Date.now()}`;
    box.dispatchEvent(new Event("input", { bubbles: true })); // the component's value follows the box
    // Gradio's Textbox sends its input event from a key press, after the value is in place
    box.dispatchEvent(new KeyboardEvent("keypress", { bubbles: true, key: "a" }));
  }

  function overview() {
    return document.querySelector("#attn-grid .js-plotly-plot");
  }

  function generating() {
    const stop = document.querySelector("#stop");
    return !!stop && !stop.disabled; // while tokens stream, the live refresh fills the overview
  }

  function bindOverview(plot) {
    if (plot.__attentionBound || !plot.on) return;
    plot.__attentionBound = true;
    plot.on("plotly_click", (data) => {
      const point = data && data.points && data.points[0];
      if (!point || !point.data || point.data.meta !== "layer-head") return;
      request(`open:${Math.round(point.y)}:${Math.round(point.x)}`);
    });
    // an answer brings a new figure (a redraw of the same one, e.g. a resize, is no answer)
    plot.on("plotly_afterplot", () => { if (plot.layout !== askedOf) asked = 0; });
  }

  function pending(plot) {
    const meta = plot && plot.layout && plot.layout.meta;
    return !!(meta && meta.pending);
  }

  // the overview's outline follows the layer and head that the controls show, once the map has them: the server
  // sends the overview again only when its maps change (explorer/views/attention.py grid_figure draws the same)
  function outlineSelection() {
    const plot = overview(), Plotly = window.Plotly;
    const meta = plot && plot.layout && plot.layout.meta;
    const shapes = plot && plot.layout && plot.layout.shapes;
    if (!Plotly || !meta || meta.tile === undefined || !shapes || !shapes.length) return;
    const layerBox = document.querySelector("#attn-layer input[type=number]");
    const headBox = document.querySelector("#attn-head input");
    if (!layerBox || !headBox) return;
    const layer = Number(layerBox.value), head = headBox.value;
    const heads = head === "mean" ? [0, meta.heads - 1] : [Number(head), Number(head)];
    if (Number.isNaN(layer) || Number.isNaN(heads[0])) return;
    const stride = meta.tile + 1, centre = meta.tile / (2 * stride) - 0.5;
    const half = meta.tile / (2 * stride) + 0.5 / stride;
    const box = { x0: heads[0] + centre - half, x1: heads[1] + centre + half, y0: layer + centre - half,
                  y1: layer + centre + half };
    const now = shapes[0];
    if (["x0", "x1", "y0", "y1"].every((k) => Math.abs(now[k] - box[k]) < 1e-6)) return;
    Plotly.relayout(plot, { shapes: [{ ...now, ...box }] });
  }

  function bindMap(plot) {
    if (plot.__attentionBound || !plot.on) return;
    plot.__attentionBound = true;
    plot.on("plotly_afterplot", outlineSelection);
  }

  setInterval(() => {
    outlineSelection(); // the controls may show a new layer or head after the map has drawn (a click on the overview)
    const plot = overview();
    if (!plot || !pending(plot) || plot.offsetParent === null || generating()) return;
    if (asked && performance.now() - asked < GIVE_UP_MS) return;
    asked = performance.now();
    askedOf = plot.layout;
    request("more");
  }, POLL_MS);

  // the query token inside the text panel's own scroll box, without scrolling the page
  function showQuery(panel) {
    const box = panel.querySelector(".attn-text");
    const query = box && box.querySelector(".tok.query");
    if (!query) return;
    const top = query.getBoundingClientRect().top - box.getBoundingClientRect().top + box.scrollTop;
    if (top < box.scrollTop || top > box.scrollTop + box.clientHeight - query.offsetHeight) {
      box.scrollTop = Math.max(0, top - box.clientHeight / 2);
    }
  }

  function watchText(panel) {
    if (panel.__attentionWatched) return;
    panel.__attentionWatched = true;
    new MutationObserver(() => showQuery(panel)).observe(panel, { childList: true, subtree: true });
  }

  new MutationObserver(() => {
    const plot = overview();
    if (plot) bindOverview(plot);
    const map = document.querySelector("#attn-map .js-plotly-plot");
    if (map) bindMap(map);
    const panel = document.querySelector("#attn-text");
    if (panel) watchText(panel);
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
