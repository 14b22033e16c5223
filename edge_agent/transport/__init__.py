"""The agent's fronts, on one event loop: event_loop.py (the loop: epoll, timers, the way in
from other threads), front_core.py (bind, accept, the connection limit and its fair share,
refusal, the pending budget, graceful stop; FrontLoop, the loop with its workers and fronts),
workers.py (where a call runs: inline, its model's thread, or the pool), framed_front.py and
grpc_front.py (thin handlers between a socket and its sans-IO connection object, each call
handed to api's `Api.serve`), pending.py (the pending budget and the fair-share rule),
socket_files.py (socket files, peer credentials) and socket_io.py (receives with descriptors,
gathered sends; the client shares it). It may import api, protocol, observe and platform; no
package the fronts call imports a transport, save the small socket_files (the metrics
exposition serves on a socket file too).
"""
