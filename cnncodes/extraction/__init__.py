"""Extraction: batched, device-aware, resumable forward passes from a source into a store."""
