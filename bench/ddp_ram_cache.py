"""Node memory of ``cache=ram`` under DDP: the peak memory a 2-process CPU run takes, with and without the RAM cache.

    .venv/bin/python bench/ddp_ram_cache.py --imgsz 640 --batches 5
    .venv/bin/python bench/ddp_ram_cache.py --src /path/to/other/checkout/src   # another version, same settings

Memory taken is the sum over the run's processes (ranks and loader workers) of their PSS (proportional set size:
a page shared by k processes counts 1/k in each) without its shared-memory part, plus the growth of the machine's
Shmem (/proc/meminfo), which counts a /dev/shm file whole, touched or not (PSS misses the pages no process has read
yet). The extra memory of cache=ram is its peak minus the uncached run's; the cache's own size is what the log
reports.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shmem_kb() -> int:
    """The machine's shared memory (tmpfs pages, mapped or not)."""
    info = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
    return int(info["Shmem"].split()[0])


def private_pss_kb(pgid: int) -> int:
    """Sum of Pss - Pss_Shmem over the processes of process group ``pgid``."""
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            rollup = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ProcessLookupError, ValueError):
            continue
        total += int(rollup["Pss"].split()[0]) - int(rollup.get("Pss_Shmem", "0 kB").split()[0])
    return total


def peak_mb(cache: str, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(peak memory taken in MB, wall seconds) of one run."""
    cmd = [sys.executable, "-m", "detector.train", f"run_dir={out / cache}", "epochs=1", f"imgsz={args.imgsz}",
           "batch_size=8", f"workers={args.workers}", "trainer=cpu", "trainer.devices=2", "trainer.strategy=ddp",
           f"cache={cache}", f"trainer.limit_train_batches={args.batches}"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(args.src))
    t0, base = time.time(), shmem_kb()
    with open(out / f"{cache}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, private_pss_kb(proc.pid) + shmem_kb() - base)
            time.sleep(0.25)
    if proc.returncode:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
        raise SystemExit(f"{cache}: exit {proc.returncode}, see {out / f'{cache}.log'}")
    return peak / 1024, time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batches", type=int, default=5, help="training batches per rank")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the detector sources to measure")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        none_mb, _ = peak_mb("null", args, out)
        ram_mb, _ = peak_mb("ram", args, out)
        cached = [ln.split(" - ", 1)[-1] for ln in (out / "ram.log").read_text().splitlines() if "RAM" in ln
                  or "cache=ram" in ln]  # fmt: skip
    print(f"2 ranks, imgsz {args.imgsz}, {args.workers} workers, built-in dataset, sources {args.src}")
    print("\n".join(cached))
    print(
        f"peak memory taken: cache=null {none_mb:.0f} MB, cache=ram {ram_mb:.0f} MB: the cache costs "
        f"{ram_mb - none_mb:.0f} MB"
    )


if __name__ == "__main__":
    main()
