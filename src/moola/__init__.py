"""moola: market data to trained, honestly evaluated and served deep sequence models."""

__version__ = "0.1.0"
