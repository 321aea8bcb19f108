"""Speed of jaxdl's train steps against PyTorch and against plain Flax, written to RESULTS.md."""
