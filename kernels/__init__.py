"""Triton kernels of fastcae, installed as the subpackage ``fastcae.kernels``."""
