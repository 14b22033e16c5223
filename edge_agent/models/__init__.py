"""Models: loading, the model check, the verifier, the engine, and the lifecycle.
"""
