"""The run report: a self-contained HTML page built from a run's metrics and summary."""
