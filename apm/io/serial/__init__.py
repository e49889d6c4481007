"""apm.io.serial."""
