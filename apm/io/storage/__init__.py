"""apm.io.storage."""
