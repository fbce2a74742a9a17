"""The FastAPI service: routers, the user vector's sources, the bundle reloader."""
