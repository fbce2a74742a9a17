"""The FastAPI service (DESIGN.md §8); built in the next issues."""
