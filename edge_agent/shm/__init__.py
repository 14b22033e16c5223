"""Shared-memory tensors on the agent's side: the segments a caller names (SysV, POSIX or a
passed descriptor) attached, checked against the caller's rights, cached, read for inputs and
written for outputs (segments.py, over the compiled _shm). The client's side is
edge_agent.shm_client. It may import protocol (tensors) and platform.
"""
