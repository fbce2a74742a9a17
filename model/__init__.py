"""Offline stage: event data, the ARGUS model, training and export."""
