"""bench/gpu/check.sh stage 5: a deterministic run SIGKILLed in its second epoch and resumed with ``ckpt_path=last``
must end bit-identical to the same run uninterrupted (tests/test_resume.py's check, on the training device).

    python bench/gpu/resume_check.py --work /tmp/w --out /tmp/stage5.json [--trainer gpu] [--epochs 3]

The uninterrupted run and the one to kill start together (the comparison does not depend on timing). Every tensor
of the final last.ckpt's ``state_dict`` and ``current_model_state``, and every row of results.csv, must be equal.
Exits 1 with the reason in the JSON when they are not.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from detector.callbacks.results_csv import read_results
from detector.data.shapes import ensure_shapes_dataset


def train(cwd: Path, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "detector.train", *args], cwd=cwd, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)  # fmt: skip


def only_run(cwd: Path, name: str) -> Path:
    (folder,) = (cwd / "outputs" / name).iterdir()
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trainer", default="gpu")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--logs", type=Path, help="folder of the runs' logs (default: --work)")
    args = ap.parse_args()
    work, logs = args.work, args.logs or args.work
    work.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    data = ensure_shapes_dataset(work / "shapes-resume", n_train=args.n_train, n_val=16)
    settings = [f"data={data}", f"epochs={args.epochs}", "imgsz=64", "batch_size=8", "workers=2",
                f"trainer={args.trainer}", "trainer.deterministic=true", "trainer.enable_progress_bar=false",
                "logger=csv", "nbs=16", "callbacks.autoanchor.gen=50", "hyp.warmup_epochs=0.5",
                "schedule.min_warmup_iters=3", "val.coco=never"]  # fmt: skip
    figures: dict = {"trainer": args.trainer, "epochs": args.epochs, "images": args.n_train}

    def save(phase: str) -> None:  # what is known so far, for a stage cut short by its cap
        args.out.write_text(json.dumps({**figures, "phase": phase}))

    t0 = time.time()
    whole = train(work, logs / "resume-whole.log", "name=whole", *settings)
    probe = train(work, logs / "resume-probe.log", "name=probe", *settings)
    while not list((work / "outputs" / "probe").glob("*/weights/last.ckpt")) and probe.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 1: the first last.ckpt is written at the end of epoch 0
    alive = probe.poll() is None
    probe.send_signal(signal.SIGKILL)
    probe.wait()
    figures["killed_after_s"] = round(time.time() - t0, 1)
    save("killed")
    why = None
    if not alive:
        why = f"the run to kill ended (rc {probe.returncode}) before it could be killed: see resume-probe.log"
    else:
        killed = only_run(work, "probe")
        figures["killed_at_epoch"] = torch.load(killed / "weights" / "last.ckpt", weights_only=True)["epoch"]
        save("resuming")
        resumed = train(work, logs / "resume-resumed.log", "name=probe", "ckpt_path=last")
        rc = resumed.wait()
        if rc:
            why = f"the resumed run failed (rc {rc}): see resume-resumed.log"
        elif "Resuming from" not in (logs / "resume-resumed.log").read_text():
            why = "the resumed run did not say 'Resuming from'"
    save("waiting for the uninterrupted run")
    if whole.wait():
        why = why or f"the uninterrupted run failed (rc {whole.returncode}): see resume-whole.log"
    if why is None:
        a_dir, b_dir = only_run(work, "probe"), only_run(work, "whole")
        rows_a, rows_b = read_results(a_dir / "results.csv"), read_results(b_dir / "results.csv")
        figures["epochs_in_results"] = [int(r["epoch"]) for r in rows_a]
        figures["results_rows_equal"] = rows_a == rows_b
        a = torch.load(a_dir / "weights" / "last.ckpt", weights_only=True)
        b = torch.load(b_dir / "weights" / "last.ckpt", weights_only=True)
        differ, compared, max_diff = [], 0, 0.0
        for key in ("state_dict", "current_model_state"):
            if a.get(key, {}).keys() != b.get(key, {}).keys():
                differ.append(f"{key}: other tensor names")
                continue
            for name in a[key]:
                compared += 1
                if not torch.equal(a[key][name], b[key][name]):
                    differ.append(f"{key}.{name}")
                    if a[key][name].is_floating_point():
                        max_diff = max(max_diff, float((a[key][name].float() - b[key][name].float()).abs().max()))
        figures.update(tensors_compared=compared, tensors_differing=len(differ), first_differing=differ[:5],
                       max_abs_diff=max_diff)  # fmt: skip
        if differ or not figures["results_rows_equal"]:
            why = f"{len(differ)} of {compared} tensors differ; results.csv rows equal: {figures['results_rows_equal']}"
        elif figures["epochs_in_results"] != list(range(args.epochs)):
            why = f"results.csv epochs {figures['epochs_in_results']}"
    figures["bit_identical"] = why is None
    if why:
        figures["why"] = why
    args.out.write_text(json.dumps(figures))
    print(json.dumps(figures))
    sys.exit(1 if why else 0)


if __name__ == "__main__":
    main()
