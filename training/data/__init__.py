"""Datasets over the shared CXR manifest."""
