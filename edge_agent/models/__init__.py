"""Models: a LoadModel url turned into verified bytes and a loaded model (loading.py,
model_files.py), the bytes checked against the TFLite schema (verifier.py, tflite_schema.py,
the compiled _flatverify or its twin) and proven in a process of their own (model_check.py
runs model_check_child.py), the engine that binds arrays and runs a model (engine.py), and
the lifecycle that serves models from a repository by itself (lifecycle/). It may import
protocol (tensors), observe, packaging and platform, and the
shared api.caller and capture.durable; never api's service, a transport or the fronts.
"""
