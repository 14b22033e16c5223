"""This machine: board profiles (boards.py), accelerators and delegates (accelerators.py,
delegates.py), the TFLite runtime it has (runtime.py), its architecture (machine.py), the
memory budget (memory.py), the kernel's permission rules for a caller (permissions.py,
caller_paths.py), descriptors a client passed with a call (passed_fds.py) and systemd's
notifications (systemd.py). The bottom layer: it imports no other package of the agent
(systemd.py's health check still reaches the client; tests/unit/test_imports.py lists it).
"""
