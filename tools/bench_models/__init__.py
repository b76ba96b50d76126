"""Model speed benchmark through the daemon's inference code."""
