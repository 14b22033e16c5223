"""Model lifecycle: models the agent serves by itself, from a repository of signed packages,
kept across restarts, swapped for new versions without a gap, and rolled back
(docs/MODEL_LIFECYCLE.md).

After TensorFlow Serving's core: sources say which versions exist (`repository.py`: the
repository folder; `store.py`: the agent's own copies), `policy.py` decides which version
of each name should serve (highest, pins, rollbacks, failures), and one manager
(`manager.py`) loads and swaps by that decision, recording what serves (`store.py`). The
service core (edge_agent.api.service) only holds the models; the composition root
(edge_agent.app.root) wires the manager to it.
"""
