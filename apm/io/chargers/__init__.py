"""apm.io.chargers."""
