"""Start-up time from the published file formats against the memory-mapped safetensors bundle.

    .venv/bin/python -m benchmarks.bundle_start [--scale 24]

Writes random weights in the four published formats (``make-tiny --scale N``: every width times N), then
runs ``python -m model_worker generate --json`` twice on them: the first start reads the sources and writes
the bundle, the second starts from the bundle. Prints both load times and their ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from model_worker.model.tiny import make_tiny


def load_seconds(weights: Path) -> float:
    """``load_s`` reported by one ``generate --json`` run in a fresh process."""
    command = [sys.executable, "-m", "model_worker", "generate", "--weights", str(weights), "--prompt", "hello",
               "--greedy", "--max-new-tokens", "4", "--device", "cpu", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)["timings"]["load_s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=24, help="width multiplier of the random weights (default 24)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bundle-start-") as workdir:
        weights = Path(workdir) / "weights"
        make_tiny(weights, seed=0, scale=args.scale)
        size = sum(f.stat().st_size for f in weights.rglob("*") if f.is_file())
        first, second = load_seconds(weights), load_seconds(weights)
    print(f"weights: {size / 2**20:.0f} MiB in the published formats (scale {args.scale})")
    print(f"first start (sources, writes the bundle): {first:.3f} s")
    print(f"second start (bundle, memory-mapped):     {second:.3f} s")
    print(json.dumps({"benchmark": "bundle_start", "scale": args.scale, "source_bytes": size,
                      "first_load_s": round(first, 4), "second_load_s": round(second, 4),
                      "speedup": round(first / second, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
