"""Data of the "nano" recipe: a tiny HoVLE trained on CPU from SmolLM2-135M.

``sources.py`` reads what is installed locally (Fashion-MNIST, a few photos, text, the SmolLM2
weights; nothing is ever downloaded), ``questions.py`` phrases captions, conversations and the
held-out questions, and ``build.py`` writes them into the folder the training pipeline reads
(``prepare_nano_data``).
"""
