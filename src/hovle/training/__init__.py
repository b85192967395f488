"""Building and training HoVLE models: the paper's three stages."""
