"""moola."""
