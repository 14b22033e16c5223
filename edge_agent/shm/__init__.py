"""Shared-memory tensors on the agent's side.
"""
