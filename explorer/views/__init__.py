"""Pure view functions: Trace/Step (plus options) -> plotly Figure or HTML string. No Gradio here."""
