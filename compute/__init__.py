"""Compute kernels under the layers: fused element-wise chains, dropout masks, activations, TensorFlow start-up settings."""
