"""spiralctl: spiral sequence datasets and an LSTM classifier on tinygrad."""

__version__ = "0.1.0"
