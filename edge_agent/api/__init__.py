"""The service as callers see it, whatever front they came through: the one RPC table of
service Agent with its method numbers and status mapping (rpcs.py, with `Api.serve`, the one
entry both fronts call), who is calling and what a model may be named (caller.py), and the
service core that loads, lists and runs models (service.py). It may import protocol (the
Predict codec, tensors), models, capture, shm, observe, packaging and platform,
never a transport: the fronts import it, not the other way round (tests/unit/test_imports.py
holds every package to its row of that table).
"""
