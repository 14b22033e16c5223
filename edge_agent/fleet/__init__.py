"""Fleet rollout (docs/FLEET.md): a signed deployment document in S3-compatible storage says
which versions each board of a fleet serves, in stages; boards read it (`board.py`, a source
for the lifecycle's manager) and operators write it (`cli.py`), with no service in between.

`document.py` holds the pure part: the format, its signature, the stage a board is in and
the rules by which a board accepts or refuses a document. It imports neither requests nor
NumPy nor a TFLite runtime, so the operator's commands run anywhere.
"""
