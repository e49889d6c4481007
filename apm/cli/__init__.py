"""apm.cli.main."""
