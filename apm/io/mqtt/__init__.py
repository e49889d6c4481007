"""apm.io.mqtt."""
