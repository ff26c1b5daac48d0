"""MMaDA platform: unified multimodal masked-diffusion models, data, training and evaluation."""

__version__ = "0.1.0"
