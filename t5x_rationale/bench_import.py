"""Import benchmark: time and peak host memory of `import_hf` on a generated checkpoint.

    python -m t5x_rationale.bench_import                       # ~1.5B Llama, 4 float32 shards
    python -m t5x_rationale.bench_import --size quick --json row.json     # ~44M, seconds
    python -m t5x_rationale.bench_import --dtype bfloat16 --layers 12 --keep --work_dir /tmp/b

Writes a random Llama-architecture checkpoint (`benchmarks/synthetic_hf.py`: config.json,
`--shards` safetensors shards and the index, tensor by tensor), then runs
`python -m t5x_rationale.import_hf` on it in a fresh process and records that process's
memory (`benchmarks/process_memory.py`): the exact peak resident set (`ru_maxrss`) and the
polled peaks of its anonymous part (`RssAnon`: the process's own memory) and file-backed part
(`RssFile`: the safetensors pages mapped while a tensor is read; page cache the kernel may drop).
A process that only imports jax and the import's modules gives the baseline. The import's
own line gives the split between reading the params into place and writing the checkpoint.

On a CPU backend the "device" is host memory: the imported params (params x bytes of
`--import_dtype`) are resident by design, so the import's host overhead is the anonymous peak
minus the baseline minus the params (`overhead_bytes`), compared with the largest tensor. On an
accelerator the params leave the host and the whole anonymous increase is that overhead.
The checkpoint files were just written, so reads come from the page cache (a warm read).
Generated files are removed afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time

from t5x_rationale.benchmarks.process_memory import baseline_rss, run_measured
from t5x_rationale.benchmarks.synthetic_hf import DecoderShape, write_checkpoint

SIZES = {
    # hidden 2048, GQA 16 query / 4 kv heads of 128, 22 layers, untied: 1.47B params
    "1.5b": DecoderShape(),
    "quick": DecoderShape(hidden=512, layers=4, intermediate=1408, heads=8, kv_heads=2),
}
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}
_TIMINGS = re.compile(r"([\d.]+) s reading the params into place, ([\d.]+) s writing")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", default="1.5b", choices=sorted(SIZES))
    for field in dataclasses.fields(DecoderShape):
        p.add_argument(f"--{field.name}", type=int, help=f"override the size's {field.name}")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--dtype", default="float32", choices=sorted(ITEMSIZE), help="on disk")
    p.add_argument("--import_dtype", help="param dtype of the import (default: --dtype)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mesh", default="1x-1x1", help="import_hf's --mesh")
    p.add_argument("--glibc_tunables", help="GLIBC_TUNABLES for the measured processes")
    p.add_argument("--work_dir", default="/tmp", help="files go to a new directory in it")
    p.add_argument("--keep", action="store_true", help="keep the generated and imported files")
    p.add_argument("--json", help="write the row to this file")
    return p.parse_args(argv)


def shape_of(args: argparse.Namespace) -> DecoderShape:
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(DecoderShape)
        if getattr(args, f.name) is not None
    }
    return dataclasses.replace(SIZES[args.size], **overrides)


def run(args: argparse.Namespace, work_dir: str) -> dict:
    """Generates the checkpoint under `work_dir`, measures the import; returns the row."""
    shape, import_dtype = shape_of(args), args.import_dtype or args.dtype
    hf_dir, out_dir = os.path.join(work_dir, "hf"), os.path.join(work_dir, "imported")
    start = time.perf_counter()
    written = write_checkpoint(hf_dir, shape, shards=args.shards, dtype=args.dtype, seed=args.seed)
    generate_s = time.perf_counter() - start
    load_before = os.getloadavg()
    env = None
    if args.glibc_tunables is not None:
        env = dict(os.environ, GLIBC_TUNABLES=args.glibc_tunables)
    base = baseline_rss(os.path.join(work_dir, "baseline"), env=env)
    command = [sys.executable, "-m", "t5x_rationale.import_hf", "--hf_dir", hf_dir]
    command += ["--out_dir", out_dir, "--dtype", import_dtype, "--mesh", args.mesh]
    child = run_measured(command, log_prefix=os.path.join(work_dir, "import"), env=env)
    if child.returncode != 0:
        raise RuntimeError(f"import_hf failed ({child.returncode}):\n{child.stderr[-3000:]}")
    read_s, save_s = (float(x) for x in _TIMINGS.search(child.stdout).groups())
    params_bytes = written["params"] * ITEMSIZE[import_dtype]
    peaks, largest = child.peaks, written["largest_tensor_bytes"]
    overhead = peaks.anon - base.peaks.anon - params_bytes
    return {
        "model": dataclasses.asdict(shape),
        **written,
        "dtype": args.dtype,
        "import_dtype": import_dtype,
        "params_bytes": params_bytes,
        "generate_s": generate_s,
        "import_s": child.wall_s,
        "read_s": read_s,
        "save_s": save_s,
        "baseline_rss": base.peaks.rss,
        "baseline_anon": base.peaks.anon,
        "peak_rss": peaks.rss,
        "peak_anon": peaks.anon,
        "peak_file": peaks.file,
        "anon_at_rss_peak": peaks.anon_at_rss_peak,
        "file_at_rss_peak": peaks.file_at_rss_peak,
        "memory_samples": peaks.samples,
        "peak_rss_over_baseline": peaks.rss - base.peaks.rss,
        "rss_over_baseline_per_largest": (peaks.rss - base.peaks.rss) / largest,
        "overhead_bytes": overhead,
        "overhead_per_largest": overhead / largest,
        "file_over_baseline_per_largest": (peaks.file - base.peaks.file) / largest,
        "load_avg_1m": [load_before[0], os.getloadavg()[0]],
        "cpus": len(os.sched_getaffinity(0)),
        "glibc_tunables": args.glibc_tunables,
        "mesh": args.mesh,
        "work_dir": work_dir,
    }


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def report(row: dict) -> str:
    m, largest = row["model"], row["largest_tensor_bytes"]
    name = (
        f"Llama {m['layers']}x{m['hidden']} (mlp {m['intermediate']}, {m['heads']}/"
        f"{m['kv_heads']} heads, vocab {m['vocab']}, untied), {row['dtype']} -> "
        f"{row['import_dtype']}"
    )
    lines = [
        f"{name}: {row['params'] / 1e9:.3f}B params, {_gb(row['bytes'])} in {row['shards']} "
        f"shards; largest tensor {row['largest_tensor']} {_gb(largest)}",
        f"import {row['import_s']:.1f} s (reading into place {row['read_s']:.1f} s, writing the "
        f"checkpoint {row['save_s']:.1f} s); load {row['load_avg_1m'][0]:.1f}->"
        f"{row['load_avg_1m'][1]:.1f} on {row['cpus']} CPUs",
        f"peak RSS {_gb(row['peak_rss'])} (baseline {_gb(row['baseline_rss'])}: +"
        f"{_gb(row['peak_rss_over_baseline'])} = {row['rss_over_baseline_per_largest']:.1f}x "
        "the largest tensor)",
        f"peak RssAnon {_gb(row['peak_anon'])} (baseline {_gb(row['baseline_anon'])}, params "
        f"{_gb(row['params_bytes'])} resident on the CPU device): overhead "
        f"{_gb(row['overhead_bytes'])} = {row['overhead_per_largest']:.1f}x the largest tensor",
        f"peak RssFile {_gb(row['peak_file'])} (+{row['file_over_baseline_per_largest']:.1f}x "
        f"the largest tensor over the baseline); at the RSS peak anon "
        f"{_gb(row['anon_at_rss_peak'])}, file {_gb(row['file_at_rss_peak'])}",
        "| model | params | shards | largest tensor | import (read + write) | peak RSS | "
        "RSS - baseline | anon overhead beyond params |",
        f"| {name} | {row['params'] / 1e9:.2f}B ({_gb(row['bytes'])}) | {row['shards']} | "
        f"{_gb(largest)} | {row['import_s']:.0f} s ({row['read_s']:.0f} + {row['save_s']:.0f}) "
        f"| {_gb(row['peak_rss'])} | {_gb(row['peak_rss_over_baseline'])} | "
        f"{_gb(row['overhead_bytes'])} ({row['overhead_per_largest']:.1f}x largest) |",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    work_dir = tempfile.mkdtemp(prefix="bench_import_", dir=args.work_dir)
    try:
        row = run(args, work_dir)
    finally:
        if not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(report(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
