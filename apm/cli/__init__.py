"""apm.cli."""
