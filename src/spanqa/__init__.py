"""spanqa: fine-tune, evaluate and serve extractive question-answering readers."""

__version__ = "0.1.0"
