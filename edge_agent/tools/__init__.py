"""Development tools the agent itself never imports: the model builder (real .tflite files
written with the TFLite schema's flatbuffers code), the `edge-agent demo` and `edge-agent
bench` commands, and the generator of docs tables. The CLI imports a tool inside the
command that needs it, so `edge-agent serve` loads none of this (tests/unit/test_imports.py,
tests/e2e/test_serve_imports.py)."""
