"""The service as callers see it: the RPC table, method numbers, status mapping, the caller, and the service core.
"""
