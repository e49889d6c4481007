"""apm.core."""
