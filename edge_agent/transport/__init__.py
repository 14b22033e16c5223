"""The agent's fronts, on one event loop: event_loop.py (the loop: epoll, timers, the way in
from other threads), front_core.py (bind, accept, the connection limit and its fair share,
refusal, the pending budget, graceful stop; FrontLoop, the loop with its workers and fronts),
workers.py (where a call runs: inline, its model's thread, or the pool), framed_front.py and
grpc_front.py (thin handlers between a socket and its sans-IO connection object), pending.py
(the pending budget and the fair-share rule), socket_files.py (socket files, peer
credentials) and socket_io.py (receives with descriptors, gathered sends).

May import edge_agent.protocol, edge_agent.api and edge_agent.config. Imported by the
composition root (edge_agent.app), the client (socket_io) and the metrics exposition
(socket_files: a socket file made by the same rules).
"""
