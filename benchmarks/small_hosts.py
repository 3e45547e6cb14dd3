"""Small hosts: bfloat16, int8 and int4 on random weights at the real shapes, on this machine.

    .venv/bin/python -m benchmarks.small_hosts
    .venv/bin/python -m benchmarks.small_hosts --settings int8,int4 --repeats 3
    .venv/bin/python -m benchmarks.small_hosts --settings int8 --budget-check 3 --budget-context 512
    .venv/bin/python -m benchmarks.small_hosts --device cuda --streams 1,32

The weights are written once (about 10 GB, ``benchmarks.real_shapes``) to ``--weights`` and reused. Each
setting runs ``benchmarks.host_probe`` in a fresh process, so that its peak memory is its own: it loads the
weights (peak resident memory while loading), then serves one stream (an image question) and N streams
together through the engine (peak resident memory while serving) and reports decode tokens/s. The floor for
one stream is the memory read bandwidth, sampled between that stream's decode steps, / the language model's
bytes read per token (every weight but the input embedding); the ratio one-stream tokens/s / floor says how
close decode comes to the memory's speed. Every figure is given as min / median / max over ``--repeats`` runs: the
development machine is shared, so the spread matters.

``--budget-check GB`` instead runs a full batch (as many rows as ``--memory-budget-gb GB`` allows at
``--budget-context`` positions) of conversations that reach that context, and reports how far the process
grew past its size after loading, against the budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.host_probe import SETTINGS

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "real-shapes"  # git ignores it
#: Resident memory a setting needs on the CPU at the real shapes, with room to spare (GB).
NEEDS_GB = {"float32": 24, "float16": 12, "bfloat16": 12, "int8": 8, "int4": 6}
CHILD_TIMEOUT_S = 3600
SUMMARY_FIELDS = ("bandwidth_gb_s", "bandwidth_before_load_gb_s", "load_s", "peak_rss_loading_gb", "peak_rss_serving_gb", "weights_gb",
                  "floor_tokens_per_s", "one_stream_floor_ratio", "one_stream_median_step_floor_ratio")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                        help=f"real-shape bundle, written there when missing (default {DEFAULT_WEIGHTS})")
    parser.add_argument("--settings", default="bfloat16,int8,int4", help=f"comma list of {', '.join(SETTINGS)}")
    parser.add_argument("--streams", default="1,8", help="stream counts to decode together (default 1,8)")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens each stream generates (default 16)")
    parser.add_argument("--words", type=int, default=40, help="words in each question (default 40: ~70 positions)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's, one per core)")
    parser.add_argument("--budget-check", type=float, metavar="GB", help="run the memory-budget check instead")
    parser.add_argument("--budget-context", type=int, default=512, help="positions each row reaches (default 512)")
    return parser.parse_args()


def ensure_weights(path: Path) -> Path:
    """Write the real-shape bundle once (checks disk and memory first)."""
    if (path / "minigpt4.safetensors").is_file():
        return path
    free_disk = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    if free_disk < 12e9 or available_gb() < 12:
        sys.exit(f"writing the real-shape weights needs 12 GB of disk and memory; {free_disk / 1e9:.0f} GB disk, "
                 f"{available_gb():.0f} GB memory available")
    from benchmarks.real_shapes import write_real_shape_weights

    print(f"writing random weights at the real shapes to {path} (about 10 GB, once)", flush=True)
    path.mkdir(parents=True, exist_ok=True)
    return write_real_shape_weights(path)


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


def run_child(probe_args: dict) -> dict:
    """One setting in a fresh process; its JSON line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "benchmarks.host_probe", json.dumps(probe_args)],
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{probe_args['setting']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait_for_memory(setting: str, device: str) -> None:
    """On a shared machine: wait (up to 10 minutes) until the setting's memory is available."""
    deadline = time.monotonic() + 600
    while device == "cpu" and available_gb() < NEEDS_GB[setting] and time.monotonic() < deadline:
        print(f"  waiting: {available_gb():.1f} GB available, {setting} needs {NEEDS_GB[setting]}", flush=True)
        time.sleep(20)


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(runs: list[dict], streams: list[int]) -> dict:
    """min / median / max of every figure over a setting's runs."""
    summary = {field: spread([run[field] for run in runs]) for field in SUMMARY_FIELDS if field in runs[0]}
    for count in streams:
        summary[f"tokens_per_s_{count}"] = spread([run[f"streams_{count}"]["tokens_per_s"] for run in runs])
        summary[f"median_step_tokens_per_s_{count}"] = spread(
            [run[f"streams_{count}"]["median_step_tokens_per_s"] for run in runs])
    return summary


def print_table(summaries: dict[str, dict], streams: list[int]) -> None:
    columns = ["peak_rss_loading_gb", "peak_rss_serving_gb", "weights_gb", "bandwidth_gb_s", "floor_tokens_per_s",
               *[f"{kind}tokens_per_s_{count}" for count in streams for kind in ("", "median_step_")],
               "one_stream_floor_ratio", "one_stream_median_step_floor_ratio"]
    for setting, summary in summaries.items():
        print(f"{setting}: median (min-max) over the runs")
        for column in columns:
            print(f"  {column:36} {_cell(summary.get(column))}")


def _cell(values: dict | None) -> str:
    if not values:
        return "-"
    return f"{values['median']:.2f} ({values['min']:.2f}-{values['max']:.2f})"


def save(result: dict) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"small_hosts-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return path


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30, 1),
            "load_average_before": os.getloadavg()}


def run_budget_check(args: argparse.Namespace, weights: Path) -> dict:
    setting = args.settings.split(",")[0]
    wait_for_memory(setting, args.device)
    return run_child({"weights": str(weights), "setting": setting, "device": args.device,
                      "budget_gb": args.budget_check, "context": args.budget_context, "new_tokens": args.new_tokens})


def run_settings(args: argparse.Namespace, weights: Path) -> dict:
    streams = [int(count) for count in args.streams.split(",")]
    runs: dict[str, list[dict]] = {setting: [] for setting in args.settings.split(",")}
    for repeat in range(args.repeats):
        for setting in runs:
            wait_for_memory(setting, args.device)
            print(f"run {repeat + 1}/{args.repeats}: {setting} (load average {os.getloadavg()[0]:.2f})", flush=True)
            run = run_child({"weights": str(weights), "setting": setting, "device": args.device,
                             "new_tokens": args.new_tokens, "words": args.words, "streams": streams,
                             "threads": args.threads})
            runs[setting].append(run)
            print("  " + ", ".join(f"{count} streams {run[f'streams_{count}']['tokens_per_s']:.2f} tok/s"
                                   for count in streams)
                  + f", peak {run['peak_rss_loading_gb']:.2f} / {run['peak_rss_serving_gb']:.2f} GB"
                  + f", floor ratio {run.get('one_stream_floor_ratio', 0):.2f}", flush=True)
    summaries = {setting: summarize(setting_runs, streams) for setting, setting_runs in runs.items()}
    print_table(summaries, streams)
    return {"summary": summaries, "runs": runs}


def main() -> int:
    args = parse_args()
    weights = ensure_weights(args.weights)
    result = {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}}
    result |= run_budget_check(args, weights) if args.budget_check else run_settings(args, weights)
    result["machine"]["load_average_after"] = os.getloadavg()
    print(json.dumps(result.get("summary", result)))
    print(f"results written to {save(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
