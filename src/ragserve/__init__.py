"""ragserve: a self-hosted retrieval service for RAG."""

__version__ = "0.1.0"
