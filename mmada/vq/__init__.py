"""Tokenizer training and pre-tokenization (the model itself is :mod:`mmada.models.vq`).

Modules: ``config`` (VQTrainConfig), ``presets`` (tiny, official), ``data`` (built-in images,
folders), ``module`` (Lightning module), ``callbacks`` (grids, safetensors checkpoints), ``train``
(train_tokenizer), ``pretokenize`` (encode_images, load_tokenizer_model), ``cli`` (``mmada vq``).
"""
