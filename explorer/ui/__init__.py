"""The Gradio UI: one module per tab; each builds its components and renders them from a Session."""
