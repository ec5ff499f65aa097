"""Networks: backbones and their weights and preprocessing, layer naming (FX nodes), and
surgery on heads and layer groups for fine-tuning."""
