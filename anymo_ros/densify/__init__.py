"""Dense mask backends: turn dynamic tracks into per-object masks."""
