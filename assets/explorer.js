// The page's own behaviour: a click on a token anywhere (a text chip or a point of a plot) selects it everywhere;
// a click on a candidate of the Next token tab forces it (a branch), one on the branches' bar switches branch;
// Ctrl+Enter in the prompt generates; the output strip follows new text unless the reader scrolled up in it.

(() => {
  // selection: the position goes into window.__explorerPos and a click on the hidden #select-token button, whose
  // event reads it (see blocks.py)
  function select(pos) {
    const button = document.querySelector("#select-token");
    if (!button || pos === undefined || pos === null || Number.isNaN(Number(pos))) return;
    window.__explorerPos = Number(pos);
    button.click();
  }
  // branching: the same pattern, window.__explorerFork ("position,token id") or __explorerBranch and a hidden button
  function press(id, name, value) {
    const button = document.querySelector(id);
    if (!button) return;
    window[name] = value;
    button.click();
  }
  document.addEventListener("click", (event) => {
    const chip = event.target.closest && event.target.closest(".tok[data-pos]");
    if (chip) select(chip.dataset.pos);
    const go = event.target.closest && event.target.closest(".branch-go[data-branch]");
    if (go && !go.classList.contains("cur")) press("#switch-branch", "__explorerBranch", Number(go.dataset.branch));
    // a tab opens at its top, not where the last one was scrolled to
    if (event.target.closest && event.target.closest("#tabs [role=tab]")) {
      requestAnimationFrame(() => document.querySelectorAll("#tabs .tabitem").forEach((t) => { t.scrollTop = 0; }));
    }
  });

  document.addEventListener("keydown", (event) => {
    const go = event.target.closest && event.target.closest(".branch-go[data-branch]");
    if (go && (event.key === "Enter" || event.key === " ")) {  // the bar's buttons are spans: keys as a button's
      event.preventDefault();
      go.click();
      return;
    }
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    if (!(event.target.closest && event.target.closest("#prompt"))) return;
    event.preventDefault();
    const button = document.querySelector("#generate");
    if (button && !button.disabled) button.click();
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
      if (meta === "candidate") press("#branch-token", "__explorerFork", `${point.customdata[3]},${point.customdata[2]}`);
    });
  }

  // the output strip: keep the newest text in view while it streams, unless the reader scrolled up
  let follow = true;
  function watchOutput(out) {
    if (out.__explorerWatched) return;
    out.__explorerWatched = true;
    out.addEventListener("scroll", () => { follow = out.scrollTop + out.clientHeight >= out.scrollHeight - 24; });
    // once per frame, not per change: reading scrollHeight lays the whole text out again
    let queued = false;
    new MutationObserver(() => {
      if (!follow || queued) return;
      queued = true;
      requestAnimationFrame(() => { queued = false; if (follow) out.scrollTop = out.scrollHeight; });
    }).observe(out, { childList: true, subtree: true });
  }

  new MutationObserver(() => {
    document.querySelectorAll(".js-plotly-plot").forEach(bind);
    const out = document.querySelector("#output");
    if (out) watchOutput(out);
  }).observe(document.documentElement, { childList: true, subtree: true });
})();
