"""Seeing inside the network: saliency, Grad-CAM, activation grids, first-layer filters,
and the figures that draw them."""
