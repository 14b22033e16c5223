"""The composition root and the command line: root.py wires one configuration into the
service, its sources, the fronts, capture, metrics and systemd, and runs them; cli.py is the
`edge-agent` command. The only package that may import every other; the development tools
(edge_agent.tools) only inside the `demo` and `bench` commands, so nothing the agent serves
with loads them.
"""
