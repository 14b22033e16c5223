"""Observability: metrics, their exposition, the heartbeat.
"""
