"""The application: the run folder, task-family runners, artifacts, plots, the pipeline and the CLI."""
