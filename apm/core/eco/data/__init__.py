"""Bundled price data (see README.md here for how it was made)."""
