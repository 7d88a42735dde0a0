"""Triton kernels of rsg_fast (installed as ``rsg_fast.kernels``)."""
