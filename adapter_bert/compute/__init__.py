"""Compute under the layers: fused element-wise kernels, dropout masks, activations, precision, the optimizer, TensorFlow start-up settings."""
