"""The built-in tiny world: arithmetic word problems and shapes scenes, generated from a seed.

Pure generators with no platform imports, so every layer may use them: the built-in tokenizer's
corpus, the ``builtin:`` data sources, the image tokenizer's training images, the shapes checker.
"""
