"""Dataset preparation, image reading and caching."""
