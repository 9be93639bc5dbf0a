"""mdiff: a JAX experiment suite for tri-modal masked diffusion and the symmetry generative model."""

__version__ = "0.1.0"
