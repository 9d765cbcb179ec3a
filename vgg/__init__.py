"""VGG16 in TensorFlow 2: model, weight files, preprocessing and ImageNet class names (no Beam)."""

__version__ = "0.2.0"
