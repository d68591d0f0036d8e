"""Commands of the scoring and running layers (added as those layers land)."""
