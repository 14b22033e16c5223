"""Development tools and the user commands built on them: the model builder (real .tflite
files written with the TFLite schema's flatbuffers code), `edge-agent demo` and `edge-agent
bench` (demo.py, bench.py, launch.py), the grpcio reference server bench compares against,
the local runner behind `make run` and the generators of docs tables. They may import any
package but app; nothing the agent serves with imports them: the CLI imports demo and bench
inside their commands (tests/unit/test_imports.py, tests/e2e/test_serve_imports.py).
"""
