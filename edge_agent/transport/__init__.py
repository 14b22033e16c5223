"""The agent's fronts and what they share: the framed UNIX-socket front (framed_front.py, a
loop over protocol's ServerConnection) and the gRPC front (grpc_front.py, over h2), both
handing each call to api's `Api.serve`; the one budget for incomplete
requests (pending.py), the socket files and peer credentials (socket_files.py) and the
socket helpers the client shares (socket_io.py). It may import api, protocol, observe and
platform; no package the fronts call imports a transport, save the small socket_files (the
metrics exposition serves on a socket file too).
"""
