"""apm.cli.views."""
