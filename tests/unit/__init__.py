"""Fast tests of pure code: no subprocess, broker, pty or network (`make unit`)."""
