"""jaxdl: the classic deep-learning curriculum as a JAX functional research framework."""

__version__ = "0.1.0"
