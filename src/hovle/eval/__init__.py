"""Evaluation of trained HoVLE models (``nano``: the held-out checks of the nano recipe)."""
