"""Offline stage: event data, the ARGUS model, training and export (DESIGN.md §2-§6)."""
