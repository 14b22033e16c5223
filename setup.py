"""Builds the edge_agent package and compiles its Cython modules from cext/."""
import os

from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup
from setuptools.command.build_py import build_py

# Each module in cext/ becomes edge_agent.<module>; they need only libc and Python headers,
# so cross/ can compile them with a cross compiler. C declarations live in cext/includes/*.pxd
# (cimported as includes.<name>, found through cythonize's include_path) and C helpers in
# cext/includes/*.h (found by the C compiler through include_dirs); docs/DEVELOPMENT.md.
INCLUDES = "cext/includes"
EXTENSIONS = [
    Extension("edge_agent.protocol._framing", ["cext/_framing.pyx"]),
    Extension("edge_agent.shm._shm", ["cext/_shm.pyx"], include_dirs=[INCLUDES],
              depends=[f"{INCLUDES}/sigbus_guard.h", f"{INCLUDES}/shm_compat.h"]),
    Extension("edge_agent.observe._metrics", ["cext/_metrics.pyx"]),
    Extension("edge_agent.protocol._predict", ["cext/_predict.pyx"]),
    Extension("edge_agent.models._flatverify", ["cext/_flatverify.pyx"]),
    Extension("edge_agent.models._plain_call", ["cext/_plain_call.pyx"]),
    Extension("edge_agent.transport._inline_predicts", ["cext/_inline_predicts.pyx"]),
]

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "edge_agent", "VERSION")) as f:
    version = f.read().strip()


class build_py_with_board_profiles(build_py):
    """Also ships firmware_configs/ (at the top of the repository, as SPEC §8 has it) inside
    the package as edge_agent/firmware_configs/, where edge_agent.platform.boards finds it in an
    installed wheel; a checkout or an editable install finds the top-level directory."""

    def run(self):
        super().run()
        source = os.path.join(here, "firmware_configs")
        target = os.path.join(self.build_lib, "edge_agent", "firmware_configs")
        self.mkpath(target)
        for name in sorted(os.listdir(source)):
            if name.endswith(".json"):
                self.copy_file(os.path.join(source, name), os.path.join(target, name))


setup(
    name="edge-agent",
    version=version,
    description="A lean model-serving agent for small Linux boards, speaking the Edge Manager agent.proto",
    long_description=open(os.path.join(here, "README.md")).read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Developers",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Cython",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Programming Language :: Python :: Implementation :: CPython",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Typing :: Typed",
    ],
    python_requires=">=3.10",  # dataclass(slots=True)
    packages=find_packages(include=["edge_agent", "edge_agent.*"]),
    package_data={"edge_agent": ["VERSION", "*.pyi", "*/*.pyi", "py.typed"]},
    ext_modules=cythonize(
        EXTENSIONS,
        compiler_directives={"language_level": "3"},
        include_path=["cext"],
        quiet=True,
    ),
    install_requires=[
        # tflite-runtime 2.14 is built against NumPy 1.x; LiteRT supports NumPy 2.
        "numpy>=1.23,<2; python_version < '3.12'",
        "numpy>=1.23; python_version >= '3.12'",
        "protobuf>=7.35.1",  # the generated agent_pb2.py checks for this runtime
        "tflite-runtime==2.14.*; python_version < '3.12' and platform_machine != 'armv7l'",
        "ai-edge-litert; python_version >= '3.12'",
        # The TFLite schema's generated code: the demo and bench build their models with it,
        # and the agent reads an Edge TPU model's operators with it (docs/DEVELOPMENT.md).
        "tflite>=2.18",
        "flatbuffers>=24.3.25",
        "pynacl>=1.5",  # Ed25519 signatures of model packages
        # Capture uploads to S3-compatible stores; imported only when a Cloud destination
        # or the periodic upload is used.
        "requests>=2.31",
        "requests-aws4auth>=1.2",
        # The gRPC front's HTTP/2 (pure Python, sans-IO; docs/PROTOCOL.md says why not grpcio).
        "h2>=4.1",
        # Prometheus exposition (edge_agent_metrics_listen, _textfile): small, pure Python;
        # imported only when one of them is set.
        "prometheus-client>=0.17",
    ],
    extras_require={
        "mqtt": ["paho-mqtt>=2.0"],  # the MQTT heartbeat (edge_agent_mqtt_url)
        # The TensorFlow Lite runtime by name (docs/INSTALL.md: which one, and the figures).
        "litert": ["ai-edge-litert>=2.3"],
        "tflite-runtime": ["tflite-runtime==2.14.*; python_version < '3.12'"],
    },
    entry_points={"console_scripts": ["edge-agent = edge_agent.app.cli:main"]},
    cmdclass={"build_py": build_py_with_board_profiles},
)
