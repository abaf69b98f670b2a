"""maekit: one masked-autoencoder engine for data that is not photos."""

from maekit.tokens import DomainAdapter, Tokens

__version__ = "0.1.0"
__all__ = ["DomainAdapter", "Tokens", "__version__"]
