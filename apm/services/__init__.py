"""apm.services."""
