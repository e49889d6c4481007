"""apm.io."""
