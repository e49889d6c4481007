"""apm.io.http."""
