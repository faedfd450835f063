"""Build hook: generates the cachecoord.v1 stubs from proto/ with grpcio-tools while the package is built.

The stubs are never committed. The .proto files are looked up in `proto/` beside this file (an sdist carries a
copy) or at the repository root two levels up (`pip install ./clients/python` from a clone). The generated code
pins minimum grpcio and protobuf runtimes (it refuses to import under older ones), so the package's dependencies
are read from what was generated rather than guessed.
"""
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_FILES = ["cachecoord/v1/cache_service.proto", "cachecoord/v1/loader_service.proto"]


def proto_root() -> Path:
    for candidate in (HERE / "proto", HERE.parent.parent / "proto"):
        if all((candidate / name).is_file() for name in PROTO_FILES):
            return candidate
    raise SystemExit(
        f"cachecoord: {PROTO_FILES[0]} not found in {HERE / 'proto'} nor {HERE.parent.parent / 'proto'}: "
        "build from the repository (clients/python) or from an sdist"
    )


def generate(out: Path) -> None:
    """Writes cachecoord/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py under out (a package dir in the wheel)."""
    import importlib.resources

    from grpc_tools import protoc

    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    root = proto_root()
    code = protoc.main([
        "grpc_tools.protoc", f"-I{root}", f"-I{well_known}",
        f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}", *PROTO_FILES,
    ])
    if code != 0:
        raise SystemExit(f"cachecoord: grpc_tools.protoc failed ({code}) on {root}")
    init = out / "cachecoord" / "v1" / "__init__.py"
    init.write_text('"""Stubs generated from proto/cachecoord/v1 at build time (grpcio-tools)."""\n')


_GENERATED: "Path | None" = None


def generated() -> Path:
    """One generation per setup.py run, shared by the dependency floors and build_py."""
    global _GENERATED
    if _GENERATED is None:
        _GENERATED = Path(tempfile.mkdtemp(prefix="cachecoord-stubs-"))
        generate(_GENERATED)
    return _GENERATED


def runtime_requirements() -> "list[str]":
    v1 = generated() / "cachecoord" / "v1"
    grpc_code = (v1 / "cache_service_pb2_grpc.py").read_text()
    pb_code = (v1 / "cache_service_pb2.py").read_text()
    grpc_floor = re.search(r"GRPC_GENERATED_VERSION = '([^']+)'", grpc_code)
    pb_floor = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb_code)
    return [
        f"grpcio>={grpc_floor.group(1)}" if grpc_floor else "grpcio",
        f"protobuf>={'.'.join(pb_floor.groups())}" if pb_floor else "protobuf",
        # google.rpc.Status and ErrorInfo, to decode the reason of an error (grpc-status-details-bin).
        "googleapis-common-protos>=1.56",
    ]


class BuildWithStubs(build_py):
    def run(self) -> None:
        super().run()
        target = Path(self.build_lib) / "cachecoord" / "v1"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(generated() / "cachecoord" / "v1", target)


class SdistWithProtos(sdist):
    """An sdist carries the .proto files it is built from, since proto/ lies outside this directory."""

    def make_release_tree(self, base_dir, files) -> None:
        super().make_release_tree(base_dir, files)
        for name in PROTO_FILES:
            dest = Path(base_dir) / "proto" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(proto_root() / name, dest)


setup(
    install_requires=runtime_requirements(),
    cmdclass={"build_py": BuildWithStubs, "sdist": SdistWithProtos},
)
