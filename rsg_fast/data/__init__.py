"""Long-tailed datasets."""
