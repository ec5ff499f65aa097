"""Seeing inside the network: saliency, Grad-CAM, activation grids, first-layer filters,
activation maximisation and DeepDream, and the figures that draw them."""
