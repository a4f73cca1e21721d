"""Nefos: a self-hostable multi-tenant cloud control plane."""

__version__ = "0.1.0"
