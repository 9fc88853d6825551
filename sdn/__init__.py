"""Shallow-Deep Networks: internal classifiers, early exits and overthinking analyses."""

__version__ = "0.1.0"
