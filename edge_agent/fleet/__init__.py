"""Fleet rollout (docs/FLEET.md): a signed deployment document in S3-compatible storage says
which versions each board of a fleet serves, in stages; boards read it (board.py, a source for
the lifecycle's manager; link.py, transfer.py) and operators write it (cli.py), with no
service in between. document.py holds the pure part (the format, its signature, a board's
stage, the rules by which a board accepts or refuses a document) and imports neither requests
nor NumPy nor a TFLite runtime, so the operator's commands run anywhere. It may import capture
(the S3 client), models (the lifecycle's policy), observe, packaging and platform; only the
composition root and the CLI import it.
"""
