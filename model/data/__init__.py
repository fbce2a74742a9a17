"""Event data: schema and reader, simulator, loaders, splits and batching."""
