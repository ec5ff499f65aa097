"""Names the command line needs without importing torch."""

DEFAULT_MODEL = "efficientnet_lite0"
"""The backbone used when none is named: works offline with real ImageNet weights."""
