"""Simulated datasets on disk: images, COCO annotations, metadata and a contact sheet."""
