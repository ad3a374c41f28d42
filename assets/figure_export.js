// Every figure's toolbar exports at a resolution fit for slides: the camera saves a PNG at 3x the size shown, a second
// button an SVG. plotly.js takes such options per plot (its config), so each newPlot/react gets them: in the app
// (Gradio loads plotly.js late and assigns window.Plotly) and in the offline report (explorer/export.py embeds this
// file before plotly.js).
(() => {
  const SCALE = 3; // a figure about 700 px wide becomes 2,100 px: sharp on a 1080p slide
  let plotly;

  function filename(layout) {
    const title = layout && layout.title && (layout.title.text || layout.title);
    const words = typeof title === "string" ? title.replace(/<[^>]*>/g, "").replace(/[^A-Za-z0-9]+/g, "-") : "";
    return ("explorer-" + words).replace(/-+$/, "").slice(0, 80);
  }

  function withExport(config, layout) {
    const name = filename(layout);
    const svg = {
      name: "Download plot as an SVG",
      icon: plotly.Icons.disk,
      click: (gd) => plotly.downloadImage(gd, { format: "svg", filename: name }),
    };
    const added = (config && config.modeBarButtonsToAdd) || [];
    return Object.assign({}, config, {
      toImageButtonOptions: Object.assign({ format: "png", scale: SCALE, filename: name },
        config && config.toImageButtonOptions),
      modeBarButtonsToAdd: added.some((b) => b && b.name === svg.name) ? added : added.concat([svg]),
    });
  }

  function wrap(P) {
    if (!P || P.__explorerExport) return;
    P.__explorerExport = true;
    for (const method of ["newPlot", "react"]) {
      const original = P[method];
      P[method] = function (gd, data, layout, config) {
        if (data && !Array.isArray(data) && typeof data === "object" && "data" in data) { // the figure form
          return original.call(this, gd, Object.assign({}, data, { config: withExport(data.config, data.layout) }));
        }
        return original.call(this, gd, data, layout, withExport(config, layout));
      };
    }
  }

  Object.defineProperty(window, "Plotly", {
    configurable: true,
    get: () => plotly,
    set: (value) => { plotly = value; wrap(value); },
  });
})();
