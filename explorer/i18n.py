"""The UI's words (tab names, labels, info texts, hints, the views' explanations) in English and French, served by
Gradio's i18n (gr.I18n, passed to launch): a component gets a key, t("controls.generate"), and the browser's language
picks the text, else English. What handlers compute per request (status lines, plots, views' HTML) stays English."""
from __future__ import annotations

import re

import gradio as gr
from gradio.i18n import I18nData

from explorer.probing import PATCH_MAX_TOKENS
from explorer.views.rope import FACTORS

LANGUAGES = ("en", "fr")

# key -> the text in each language. Gradio's front end formats each text as an ICU message: no braces, and one key per
# string (a label may add words around it: "<p>" + t(key) + "</p>", t("common.layer") + " 3").
TEXTS: dict[str, dict[str, str]] = {
    # the title line
    "app.tagline": {
        "en": "Watch a language model write, token by token, and look inside.",
        "fr": "Voyez un modèle de langage écrire, token par token, de l'intérieur."},
    "app.presentation": {"en": "Presentation mode", "fr": "Mode présentation"},
    "app.random_weights": {
        "en": "⚠️ **Random weights.** This model was built from its configuration alone: the text it writes is noise, "
              "but every shape, attention map and routing decision is computed by the real architecture.",
        "fr": "⚠️ **Poids aléatoires.** Ce modèle a été construit à partir de sa seule configuration : le texte qu'il "
              "écrit n'est que du bruit, mais chaque forme, chaque carte d'attention et chaque décision de routage est "
              "calculée par la véritable architecture."},
    # the controls
    "controls.prompt": {"en": "Prompt (Ctrl+Enter generates)", "fr": "Prompt (Ctrl+Entrée pour générer)"},
    "controls.examples": {"en": "Examples", "fr": "Exemples"},
    "controls.chat": {"en": "Chat template", "fr": "Format de conversation"},
    "controls.chat_info": {
        "en": "Wraps the prompt as a user's turn of a chat, as the instruct model was trained: it then answers. "
              "Off: it continues the text as written.",
        "fr": "Présente le prompt comme un tour de chat, comme le modèle instruct l'a appris : il y répond. "
              "Décoché : il poursuit le texte tel quel."},
    "controls.generate": {"en": "Generate", "fr": "Générer"},
    "controls.stop": {"en": "Stop", "fr": "Arrêter"},
    "controls.sampling": {"en": "Sampling", "fr": "Échantillonnage"},
    "controls.max_new_tokens": {"en": "Max new tokens", "fr": "Tokens à générer"},
    "controls.greedy": {"en": "Greedy (always the most likely token)",
                        "fr": "Glouton (toujours le token le plus probable)"},
    "controls.temperature": {"en": "Temperature", "fr": "Température"},
    "controls.top_k": {"en": "Top-k (0 = off)", "fr": "Top-k (0 = désactivé)"},
    "controls.top_p": {"en": "Top-p", "fr": "Top-p"},
    "controls.seed": {"en": "Seed", "fr": "Graine"},
    "controls.stop_at_eos": {"en": "Stop at end-of-text", "fr": "S'arrêter au token de fin de texte"},
    # the output strip and the views' common words
    "output.label": {"en": "Output", "fr": "Sortie"},
    "output.hint": {
        "en": "The model's text appears here as it writes, each token tinted by its probability. Click any token to "
              "select it in every view.",
        "fr": "Le texte du modèle s'affiche ici au fil de l'écriture, chaque token teinté selon sa probabilité. "
              "Cliquez sur un token pour le sélectionner dans toutes les vues."},
    "common.empty": {"en": "Type a prompt and press Generate", "fr": "Saisissez un prompt et cliquez sur Générer"},
    "common.layer": {"en": "Layer", "fr": "Couche"},
    # the tabs (their ids, explorer/ui/*_tab.py's titles, stay English: links and lessons name them)
    "tab.tokens": {"en": "Tokens", "fr": "Tokens"},
    "tab.embeddings": {"en": "Embeddings", "fr": "Plongements"},
    "tab.attention": {"en": "Attention", "fr": "Attention"},
    "tab.next_token": {"en": "Next token", "fr": "Token suivant"},
    "tab.logit_lens": {"en": "Logit lens", "fr": "Lentille logit"},
    "tab.experts": {"en": "Experts", "fr": "Experts"},
    "tab.architecture": {"en": "Architecture", "fr": "Architecture"},
    "tab.probe": {"en": "Probe", "fr": "Sonde"},
    # Tokens
    "tokens.explain": {
        "en": "Text is cut into **tokens**, pieces from a fixed vocabulary (byte-level BPE). Each chip is one token "
              "with its id. The model gives every token a probability p(x_t | x_<t); a text's probability is their "
              "product P = Π p(x_t | x_<t), so log P is a sum: **log P(prompt)** over the prompt, "
              "**log P(prompt + generated)** over the whole text. Each bar is a token's share, its surprisal −log p.",
        "fr": "Le texte est découpé en **tokens**, des morceaux pris dans un vocabulaire fixe (BPE au niveau des "
              "octets). Chaque pastille est un token, avec son identifiant. Le modèle donne à chaque token une "
              "probabilité p(x_t | x_<t) ; la probabilité d'un texte est leur produit P = Π p(x_t | x_<t), donc log P "
              "est une somme : **log P(prompt)** sur le prompt, **log P(prompt + généré)** sur tout le texte. "
              "Chaque barre est la part d'un token, sa surprise −log p."},
    # Embeddings
    "embeddings.projection": {"en": "Projection", "fr": "Projection"},
    "embeddings.2d": {"en": "2-D", "fr": "2D"},
    "embeddings.3d": {"en": "3-D", "fr": "3D"},
    "embeddings.explain": {
        "en": "Each token id x_i picks row e_i = E[x_i] of the **embedding matrix** E (vocabulary × d_model): that "
              "vector is what enters the first block. Nearby rows belong to tokens the model treats alike. Below, "
              "the selected token's vector after each block: the **residual stream** the layers write into.",
        "fr": "Chaque identifiant de token x_i choisit la ligne e_i = E[x_i] de la **matrice de plongement** E "
              "(vocabulaire × d_model) : ce vecteur est ce qui entre dans le premier bloc. Des lignes proches "
              "appartiennent à des tokens que le modèle traite de la même façon. En dessous, le vecteur du token "
              "sélectionné après chaque bloc : le **flux résiduel** dans lequel les couches écrivent."},
    # Attention
    "attention.head": {"en": "Head (mean: all heads)", "fr": "Tête (moyenne : toutes)"},
    "attention.mean": {"en": "mean", "fr": "moyenne"},
    "attention.hide_sink": {"en": "Hide first token (attention sink)",
                            "fr": "Masquer le 1er token (puits d'attention)"},
    "attention.explain": {
        "en": "Each head computes, for every token i, weights over the tokens j ≤ i (softmax of q_i·k_j / √d_head) "
              "and mixes their values. Row i of a map is token i's attention; rows sum to 1 and the future is masked. "
              "Many heads park attention on the first token (an **attention sink**): hide it to see the rest.",
        "fr": "Chaque tête calcule, pour chaque token i, des poids sur les tokens j ≤ i (softmax de q_i·k_j / √d_head) "
              "et mélange leurs valeurs. La ligne i d'une carte est l'attention du token i ; chaque ligne somme à 1 "
              "et le futur est masqué. Beaucoup de têtes déposent leur attention sur le premier token (un **puits "
              "d'attention**) : masquez-le pour voir le reste."},
    "attention.explain_mla": {
        "en": "**Multi-head Latent Attention** (DeepSeek-V3, Kimi-K2): each token's keys and values for all heads are "
              "expanded from one small latent vector c_t; only c_t and a shared rotary key part are cached.",
        "fr": "**Multi-head Latent Attention** (DeepSeek-V3, Kimi-K2) : les clés et les valeurs d'un token pour toutes "
              "les têtes sont reconstruites à partir d'un seul petit vecteur latent c_t ; seuls c_t et une partie "
              "rotative partagée de la clé sont mis en cache."},
    # Next token
    "next_token.step": {"en": "Step (generated token)", "fr": "Étape (token généré)"},
    "next_token.explain": {
        "en": "At each step the model outputs a probability for every token in the vocabulary, "
              "p(x_t | x_<t) = softmax(logits). **Temperature** divides the logits (sharper below 1, flatter above), "
              "**top-k** keeps the k most likely, **top-p** keeps the smallest set with probability mass ≥ p; "
              "the token is drawn from what is left. The step slider selects that step's token everywhere.\n\n"
              "**Click a candidate's row** (kept or cut) to force that token at this step: the model writes on from "
              "it, a branch. The bar above the text switches between branches; the original is kept.",
        "fr": "À chaque étape, le modèle donne une probabilité à chaque token du vocabulaire, "
              "p(x_t | x_<t) = softmax(logits). La **température** divise les logits (plus piquée sous 1, plus plate "
              "au-dessus), **top-k** garde les k plus probables, **top-p** garde le plus petit ensemble de masse de "
              "probabilité ≥ p ; le token est tiré parmi ce qui reste. Le curseur d'étape sélectionne le token de "
              "cette étape dans toutes les vues.\n\n"
              "**Cliquez sur la ligne d'un candidat** (gardé ou écarté) pour imposer ce token à cette étape : le "
              "modèle poursuit à partir de lui, c'est une branche. La barre au-dessus du texte passe d'une branche à "
              "l'autre ; l'original est conservé."},
    # Logit lens
    "logit_lens.explain": {
        "en": "The **logit lens** reads the residual stream after every block through the model's own final norm "
              "and unembedding, as if the model ended there. The input tokens run along the bottom; each cell "
              "writes the token that layer would predict next, coloured by its probability: watch the answer form "
              "in the later layers. Select a token to move the window of positions.",
        "fr": "La **lentille logit** (logit lens) lit le flux résiduel après chaque bloc à travers la norme finale et "
              "le dé-plongement du modèle lui-même, comme si le modèle s'arrêtait là. Les tokens d'entrée sont en "
              "bas ; chaque case écrit le token que cette couche prédirait ensuite, coloré selon sa probabilité : "
              "regardez la réponse se former dans les dernières couches. Sélectionnez un token pour déplacer la "
              "fenêtre de positions."},
    # Experts
    "experts.layer": {"en": "MoE layer (router scores, load, shared vs routed)",
                      "fr": "Couche MoE (scores du routeur, charge, partagés ou routés)"},
    "experts.load_all": {"en": "Load of every MoE layer", "fr": "Charge de toutes les couches MoE"},
    "experts.explain": {
        "en": "In a **Mixture-of-Experts** layer the feed-forward network is split into many small **experts**. "
              "For every token a **router** scores each routed expert, s_i = sigmoid(u · e_i), and only the **top-k** "
              "run (top-k routing). The choice adds a per-expert **load-balancing bias** b_i to the scores, but the "
              "bias is used only for choosing: the weights g_i come from the raw scores, normalised to sum to 1 and "
              "multiplied by **routed_scaling_factor**. The **shared experts** are always on and see every token. "
              "The layer's output is shared(x) + Σ g_i · expert_i(x): a token pays for k experts, not all of them.",
        "fr": "Dans une couche **Mixture-of-Experts** (mélange d'experts), le réseau feed-forward est découpé en "
              "nombreux petits **experts**. Pour chaque token, un **routeur** note chaque expert routé, "
              "s_i = sigmoid(u · e_i), et seuls les **top-k** s'exécutent (routage top-k). Le choix ajoute aux scores "
              "un **biais d'équilibrage de charge** b_i propre à chaque expert, mais ce biais ne sert qu'à choisir : "
              "les poids g_i viennent des scores bruts, normalisés pour sommer à 1 puis multipliés par "
              "**routed_scaling_factor**. Les **experts partagés** sont toujours actifs et voient chaque token. La "
              "sortie de la couche est shared(x) + Σ g_i · expert_i(x) : un token paie pour k experts, pas pour tous."},
    # Architecture
    "arch.show": {"en": "Show", "fr": "Afficher"},
    "arch.loaded": {"en": "Loaded model:", "fr": "Modèle chargé :"},
    "arch.kimi": {"en": "Kimi-K2 (config only, 1T parameters)",
                  "fr": "Kimi-K2 (configuration seule, 1 000 Md de paramètres)"},
    "arch.config_file": {"en": "A config.json (path below)", "fr": "Un config.json (chemin ci-dessous)"},
    "arch.path": {"en": "config.json path (used with “A config.json”)",
                  "fr": "Chemin du config.json (pour « Un config.json »)"},
    "arch.path_hint": {"en": "/path/to/model/config.json", "fr": "/chemin/vers/le/modele/config.json"},
    "arch.view": {"en": "View", "fr": "Vue"},
    "arch.blocks": {"en": "Blocks", "fr": "Blocs"},
    "arch.rope": {"en": "RoPE", "fr": "RoPE"},
    "arch.context_own": {"en": "Context: the model's own", "fr": "Contexte : celui du modèle"},
    "arch.explain": {
        "en": "Every block reads the residual stream h through a **norm**, lets its tokens exchange information in "
              "**attention**, adds the result back, then transforms each token alone in the **MLP**. In a "
              "**Mixture of Experts** a router picks a few experts per token, so most parameters rest for any one "
              "token: Kimi-K2 holds about 1T parameters but uses about 32B per token. **Multi-head Latent Attention** "
              "caches one small latent per token instead of every head's keys and values.",
        "fr": "Chaque bloc lit le flux résiduel h à travers une **norme**, laisse ses tokens échanger de l'information "
              "dans l'**attention**, ajoute le résultat, puis transforme chaque token isolément dans le **MLP**. Dans "
              "un **mélange d'experts** (Mixture of Experts), un routeur choisit quelques experts par token, si bien "
              "que la plupart des paramètres restent au repos pour un token donné : Kimi-K2 compte environ 1 000 "
              "milliards de paramètres mais n'en utilise qu'environ 32 milliards par token. La **Multi-head Latent "
              "Attention** met en cache un petit vecteur latent par token au lieu des clés et des valeurs de chaque "
              "tête."},
    # Lessons
    "lessons.menu": {"en": "Lessons…", "fr": "Leçons…"},
    "lessons.previous": {"en": "◀ Previous", "fr": "◀ Précédente"},
    "lessons.next": {"en": "Next ▶", "fr": "Suivante ▶"},
    "lessons.close": {"en": "Close", "fr": "Fermer"},
    # Save & share
    "share.copy_link": {"en": "Copy link", "fr": "Copier le lien"},
    "share.panel": {"en": "Save & share", "fr": "Enregistrer et partager"},
    "share.export": {"en": "Export", "fr": "Exporter"},
    "share.import": {"en": "Open a session file…", "fr": "Ouvrir un fichier de session…"},
    "share.files": {"en": "Session (.json), tokens (.csv), report (.html)",
                    "fr": "Session (.json), tokens (.csv), rapport (.html)"},
    "share.intro": {
        "en": "Export saves this run as files; a session file opened here is replayed and checked token by token.",
        "fr": "Exporter enregistre cette génération dans des fichiers ; un fichier de session ouvert ici est rejoué "
              "et vérifié token par token."},
}
# the Probe tab's ablation, comparison and patching (its explanation of patching names the token cap: see below)
TEXTS.update({
    "probe.ablate_tab": {"en": "Ablate", "fr": "Ablation"},
    "probe.kind": {"en": "Ablate", "fr": "Retirer"},
    "probe.kind_head": {"en": "Head", "fr": "Tête"},
    "probe.kind_expert": {"en": "Expert", "fr": "Expert"},
    "probe.kind_attention": {"en": "Attention output", "fr": "Sortie de l'attention"},
    "probe.kind_mlp": {"en": "MLP output", "fr": "Sortie du MLP"},
    "probe.head": {"en": "Head", "fr": "Tête"},
    "probe.expert": {"en": "Expert", "fr": "Expert"},
    "probe.add": {"en": "Add", "fr": "Ajouter"},
    "probe.clear": {"en": "Clear", "fr": "Effacer"},
    "probe.generate_with": {"en": "Generate with the ablation on", "fr": "Générer avec l'ablation"},
    "probe.explain": {
        "en": "**Ablation** removes one part of the computation: a head's output (zeroed before the output "
              "projection), an expert (the router picks among the others), or a whole layer's attention or MLP "
              "output. The bars show the next-token distribution after the selected token, as the model computed it "
              "and without that part. **KL** measures how far the distribution moved. Pick with the controls and "
              "Add, or click a cell of the grid (a second click restores it). Tick the box to generate with the "
              "ablation on.",
        "fr": "**L'ablation** retire une partie du calcul : la sortie d'une tête (mise à zéro avant la projection de "
              "sortie), un expert (le routeur choisit parmi les autres), ou toute la sortie de l'attention ou du MLP "
              "d'une couche. Les barres montrent la distribution du token suivant après le token sélectionné, telle "
              "que le modèle l'a calculée et sans cette partie. **KL** mesure de combien la distribution a bougé. "
              "Choisissez avec les contrôles puis Ajouter, ou cliquez une case de la grille (un second clic la "
              "rétablit). Cochez la case pour générer avec l'ablation."},
    "probe.compare_tab": {"en": "Compare", "fr": "Comparer"},
    "probe.prompt_a": {"en": "Prompt A", "fr": "Prompt A"},
    "probe.prompt_b": {"en": "Prompt B", "fr": "Prompt B"},
    "probe.compare": {"en": "Compare", "fr": "Comparer"},
    "probe.attn_layer": {"en": "Attention difference: layer", "fr": "Différence d'attention : couche"},
    "probe.patch_tab": {"en": "Patch", "fr": "Patching"},
    "probe.patch_a": {"en": "Prompt A (its states are patched in)", "fr": "Prompt A (ses états sont greffés)"},
    "probe.patch_b": {"en": "Prompt B (the run patched)", "fr": "Prompt B (le calcul modifié)"},
    "probe.target": {"en": "Target (empty: A's top token)", "fr": "Cible (vide : le token favori de A)"},
    "probe.run_patching": {"en": "Run patching", "fr": "Lancer le patching"},
})
TEXTS["probe.patch_explain"] = {
    "en": "**Activation patching** (causal tracing, Meng et al. 2022): run prompt B, but at one block and one position "
          "put A's residual stream in place of B's, and see how much of A's answer comes back at B's last position. "
          "Bright cells carry what makes A's answer differ from B's. Both prompts must split into as many tokens (at "
          f"most {PATCH_MAX_TOKENS}). Click a cell to see that run.",
    "fr": "**Le patching d'activations** (traçage causal, Meng et al. 2022) : on relance le prompt B, mais à un bloc "
          "et une position on remplace son flux résiduel par celui de A, et l'on regarde combien de la réponse de A "
          "revient à la dernière position de B. Les cases claires portent ce qui distingue la réponse de A de celle "
          "de B. Les deux prompts doivent compter autant de tokens (au plus "
          f"{PATCH_MAX_TOKENS}). Cliquez une case pour voir ce calcul."}
# the RoPE view's context lengths, one key each (a label holds one key, and French puts the factor elsewhere)
TEXTS.update({f"arch.context_x{f}": {"en": f"Context: ×{f} trained",
                                     "fr": f"Contexte : ×{f} la longueur d'entraînement"} for f in FACTORS})

_FRENCH_SPACE = re.compile(r" ([:;?!»])|(«) ")


def _typeset(language: str, text: str) -> str:
    """French puts a no-break space before : ; ? ! » and after «, so that a line never starts with them."""
    if language != "fr":
        return text
    return _FRENCH_SPACE.sub(lambda m: f"\u00a0{m[1]}" if m[1] else f"{m[2]}\u00a0", text)


# a text missing in a language shows in English there (tests/unit/test_i18n.py finds it)
I18N = gr.I18n(**{language: {key: _typeset(language, texts[language]) for key, texts in TEXTS.items()
                             if language in texts} for language in LANGUAGES})


def t(key: str) -> I18nData:
    """The text of `key` in the browser's language, for a component's label, info, placeholder, value, a Tab's or
    Accordion's label, or a choice's label. An unknown key fails when the UI is built, not in a browser."""
    if key not in TEXTS:
        raise KeyError(f"no UI text {key!r} in explorer/i18n.py")
    return I18N(key)


def english(key: str) -> str:
    """The English text of `key`, for Python code that needs the words themselves."""
    return TEXTS[key]["en"]
