"""Datasets, transforms and collation that keep parent links between objects."""
