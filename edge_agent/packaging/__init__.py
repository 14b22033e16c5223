"""Signed model packages: manifests, archives, keys, versions, test vectors.
"""
