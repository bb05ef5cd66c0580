"""webslm: turn a Hugging Face small language model into a reproducible in-browser assistant."""

__version__ = "0.1.0"
