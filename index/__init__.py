"""Bundles, the HNSW index and the user-vector stores."""
