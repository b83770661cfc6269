"""The token endpoint's grants, one module each."""
