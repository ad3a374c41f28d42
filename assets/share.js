// Links that reproduce a run: the page's URL query holds the settings (prompt, chat, max_new_tokens, temperature,
// top_k, top_p, seed, greedy, stop_at_eos), the view (tab, token, layer, head) and run=1 while the text shown is what
// those settings generate. Opening a link: the server checks the settings and sets the controls (share.py, on load);
// then this presses Generate (run=1) as a user would, and once the run has ended asks the server for the view. After
// that the query follows the page (history.replaceState, so a reload keeps the state). Also: Copy link, and reading a
// session file in the browser (the app takes no uploads).
(() => {
  const SYNC_MS = 400;
  const q = (selector) => document.querySelector(selector);
  let view = null; // the view request the hidden #share-apply-view button sends (viewRequest)
  let lastRun = null; // the settings of the last run, as settings() reads them
  let syncing = false;

  function number(id) {
    const box = q(`#${id} input[type=number]`);
    return box ? box.value : "";
  }
  function flag(id) {
    const box = q(`#${id} input[type=checkbox]`);
    return box && box.checked ? "1" : "0";
  }
  function settings() {
    const prompt = q("#prompt textarea");
    return {
      prompt: prompt ? prompt.value : "", chat: flag("chat"), max_new_tokens: number("max-new-tokens"),
      temperature: number("temperature"), top_k: number("top-k"), top_p: number("top-p"), seed: number("seed"),
      greedy: flag("greedy"), stop_at_eos: flag("stop-at-eos"),
    };
  }

  function query() {
    const now = settings();
    const params = new URLSearchParams(now);
    const tab = q("#tabs button[role=tab][aria-selected=true]");
    if (tab) params.set("tab", tab.textContent.trim());
    const chosen = q("#output .tok.sel");
    if (chosen) params.set("token", chosen.dataset.pos);
    const layer = number("attn-layer"), head = q("#attn-head input");
    if (layer !== "") params.set("layer", layer);
    if (head && head.value) params.set("head", head.value);
    if (lastRun === JSON.stringify(now) && q("#output .tok")) params.set("run", "1");
    return "?" + params.toString();
  }

  function sync() {
    const search = query();
    if (search !== location.search) history.replaceState(history.state, "", location.pathname + search + location.hash);
  }

  function startSync() {
    if (syncing) return;
    syncing = true;
    setInterval(sync, SYNC_MS);
  }

  // a run starts whenever Generate is pressed (a click or Ctrl+Enter): remember its settings
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("#generate");
    if (button && !button.disabled) lastRun = JSON.stringify(settings());
  }, true);

  function runEnded() {
    // Stop turns on when the run starts and off when it ends; a short run can start and end between two looks, so a
    // new end-of-run status line ("Done…", "Stopped…") counts as a start too; a refused run (an error) never starts
    // and shows a toast
    const text = () => { const status = q("#status"); return status ? status.innerText : ""; };
    const before = text();
    return new Promise((resolve) => {
      let started = false;
      const timer = setInterval(() => {
        const stop = q("#stop"), generate = q("#generate"), now = text();
        if ((stop && !stop.disabled) || (now !== before && /^(Done|Stopped)/.test(now))) started = true;
        const refused = !started && q(".toast-body");
        if ((started || refused) && stop && stop.disabled && generate && !generate.disabled) {
          clearInterval(timer);
          resolve();
        }
      }, 100);
    });
  }

  function requestView(wanted) {
    view = JSON.stringify(wanted);
    const button = q("#share-apply-view");
    if (button) button.click();
  }

  async function openLink(linkState) {
    let link = {};
    try { link = JSON.parse(linkState || "{}"); } catch (e) { link = {}; }
    const generate = q("#generate");
    if (link.run && generate) {
      generate.click(); // the same event as a user's click: the same tokens as the Generate button gives
      await runEnded();
    }
    if (link.view && Object.keys(link.view).length) requestView(link.view);
    startSync();
  }

  function pickFile(maxChars) {
    // the file is read here and sent as text (at most maxChars + 1 characters, so a larger file is refused by size)
    return new Promise((resolve) => {
      const input = document.createElement("input");
      input.type = "file";
      input.accept = ".json,application/json";
      input.addEventListener("change", () => {
        const file = input.files && input.files[0];
        if (!file) return resolve("");
        file.slice(0, maxChars + 1).text().then(resolve, () => resolve(""));
      });
      input.addEventListener("cancel", () => resolve(""));
      input.click();
    });
  }

  async function copy() {
    sync();
    const url = location.href, button = q("#copy-link");
    let done = false;
    try {
      await navigator.clipboard.writeText(url);
      done = true;
    } catch (e) { // no clipboard API (a page served over plain http from another machine): the old way
      const box = document.createElement("textarea");
      box.value = url;
      document.body.appendChild(box);
      box.select();
      done = document.execCommand("copy");
      box.remove();
    }
    if (button) {
      const label = button.textContent;
      button.textContent = done ? "Link copied" : "Copy failed";
      setTimeout(() => { button.textContent = label; }, 1500);
    }
  }

  window.explorerShare = {
    opened: (linkState) => { openLink(linkState); },
    viewRequest: () => view,
    ran: () => { lastRun = JSON.stringify(settings()); },
    pickFile, copy,
  };
})();
