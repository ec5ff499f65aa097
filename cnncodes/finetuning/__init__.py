"""Fine-tuning in PyTorch: strategies 3 (frozen body, new head) and 4 (later layers
trained with discriminative learning rates), and the training loop."""
