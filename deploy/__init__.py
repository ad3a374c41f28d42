"""Running the app beyond one process: replicas behind nginx with sticky sessions (docs/scaling.md)."""
