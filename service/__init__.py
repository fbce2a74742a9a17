"""The FastAPI service (DESIGN.md §8): routers, the user vector's sources, the bundle reloader."""
