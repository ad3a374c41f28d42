"""The explorer: per-session state, projections, pure views (Trace/Step -> plotly Figure or HTML), Gradio UI."""
