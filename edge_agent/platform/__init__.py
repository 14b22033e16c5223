"""This machine: boards, delegates, accelerators, the TFLite runtime, memory, permissions, systemd.
"""
