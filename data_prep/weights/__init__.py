"""Converting published encoder weights (torchvision / timm ``.pth`` and ``.safetensors``,
Keras ``.h5``) into mrnn-jax's encoder weights files (see mrnn_jax/encoders/weights.py)."""
