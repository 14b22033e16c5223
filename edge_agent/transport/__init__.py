"""The agent's fronts and what they share: the front core, the framed and gRPC fronts, socket helpers, peer credentials.
"""
