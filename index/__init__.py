"""Bundles, the HNSW index and the user-vector stores (DESIGN.md §7); built in the next issues."""
