"""bench/gpu/check.sh's figures: each subcommand reads what a stage left (logs, probe files, results.csv, the GPU
samples) and writes the stage's figures as one JSON object to ``--out``; exit 1 when the stage's assertion fails
(``why`` says which), 3 when it is skipped. ``record`` appends a stage's line to stages.jsonl.

    python bench/gpu/report.py SUBCOMMAND --out FILE [options]   # subcommands: see main()
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

RESULT_COLUMNS = ("train/box_loss", "train/obj_loss", "train/cls_loss", "val/box_loss", "val/obj_loss", "val/cls_loss",
                  "metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95")  # fmt: skip


def emit(out: Path, figures: dict[str, Any], why: str | None = None, skipped: str | None = None) -> None:
    """Write the figures (with ``why``/``skipped``) and exit 1 on a failed assertion, 3 when skipped."""
    if why:
        figures["why"] = why
    if skipped:
        figures["why"] = skipped
    out.write_text(json.dumps(figures, default=str))
    print(json.dumps(figures, default=str))
    sys.exit(3 if skipped else 1 if why else 0)


def expected_files(tree: Path) -> dict[str, Path]:
    """What installing the working tree must put in site-packages (installed path -> working-tree file), from
    pyproject.toml's packages, package-dir and package-data."""
    import tomllib

    cfg = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs, data = cfg["package-dir"], cfg.get("package-data", {})
    out = {}
    for pkg in cfg["packages"]:
        key = max((k for k in dirs if k == "" or pkg == k or pkg.startswith(k + ".")), key=len)
        folder = tree / dirs[key] / pkg[len(key) :].lstrip(".").replace(".", "/")
        installed = pkg.replace(".", "/")
        for f in [*folder.glob("*.py"), *(g for pattern in data.get(pkg, []) for g in folder.glob(pattern))]:
            if f.is_file():
                out[f"{installed}/{f.relative_to(folder)}"] = f
    return out


def installed_files(site: Path, tree: Path) -> dict[str, Path]:
    """Every file installed under the packages' folders (installed path -> file), caches left out."""
    import tomllib

    packages = tomllib.loads((tree / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    roots = {site / p.replace(".", "/") for p in packages if "." not in p or p.startswith("hydra_plugins.")}
    return {str(f.relative_to(site)): f for r in roots for f in r.rglob("*")
            if f.is_file() and "__pycache__" not in f.parts}  # fmt: skip


def preflight(a: argparse.Namespace) -> None:
    figures: dict[str, Any] = {"python": sys.version.split()[0], "executable": sys.executable}
    why = []
    for dist, module in (("torch", "torch"), ("torchvision", "torchvision"), ("lightning", "lightning"),
                         ("torchmetrics", "torchmetrics"), ("hydra-core", "hydra"), ("omegaconf", "omegaconf"),
                         ("albumentations", "albumentations"), ("pycocotools", "pycocotools.coco"),
                         ("numpy", "numpy"), ("opencv-python-headless", "cv2"), ("scipy", "scipy")):  # fmt: skip
        try:
            importlib.import_module(module)
            figures[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            figures[dist] = getattr(sys.modules[module.split(".")[0]], "__version__", "?")
        except Exception as e:  # noqa: BLE001 - reported, not raised
            figures[dist] = None
            why.append(f"import {module}: {type(e).__name__}: {e}")
    modules = ["detector", "detector.train", "detector.module", "detector.amp_check", "detector.evolve.trial",
               "detector.callbacks.ema", "hydra_plugins.detector_evolve.evolve_sweeper", "run_probe", "rank_probe",
               "epoch_rate", "dataloader", "tests.helpers"]  # fmt: skip
    imported = {}
    for name in modules:
        try:
            imported[name] = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            why.append(f"import {name}: {type(e).__name__}: {e}")
    figures["imports_failed"] = [m for m in modules if m not in imported]
    import torch

    figures["cuda"] = torch.version.cuda
    figures["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    figures["cuda_available"] = torch.cuda.is_available()
    figures["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if a.need_cuda and not figures["cuda_available"]:
        why.append("CUDA is not available")
    # detector comes from the install just built from this working tree, byte for byte
    site = a.site.resolve()
    det = imported.get("detector")
    figures["detector_file"] = getattr(det, "__file__", None)
    if det is not None and not Path(det.__file__).resolve().is_relative_to(site):
        why.append(f"detector imported from {det.__file__}, not from {site}")
    tree, inst = expected_files(a.tree), installed_files(site, a.tree)
    missing = sorted(set(tree) - set(inst))
    extra = sorted(set(inst) - set(tree))
    changed = sorted(k for k in set(tree) & set(inst) if tree[k].read_bytes() != inst[k].read_bytes())
    figures.update(tree_files=len(tree), installed_files=len(inst), missing=missing[:5], extra=extra[:5],
                   changed=changed[:5])  # fmt: skip
    if missing or extra or changed:
        why.append(f"install differs from the working tree: {len(missing)} missing, {len(extra)} extra, "
                   f"{len(changed)} changed")  # fmt: skip
    dist = sorted(site.glob("detector-*.dist-info"))
    figures["dist_info"] = [d.name for d in dist]
    if len(dist) != 1 or dist[0].stat().st_mtime < a.t_start:
        why.append(f"not one dist-info built by this run: {figures['dist_info']}")
    figures["nvidia_smi"] = Path(a.smi).read_text().strip() if a.smi and Path(a.smi).is_file() else None
    emit(a.out, figures, "; ".join(why) or None)


def gpu_samples(path: Path | None) -> list[tuple[float, int, float, float]]:
    """(unix time, gpu index, utilisation %, memory MiB) from nvidia-smi's csv (noheader, nounits)."""
    rows = []
    if path is None or not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        try:
            t = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((t, int(parts[1]), float(parts[2]), float(parts[3])))
        except (ValueError, IndexError):
            continue
    return rows


def busy(samples: list[tuple[float, int, float, float]], spans: list[tuple[float, float]], gpu: int = 0) -> dict:
    """Share of samples with utilisation > 0, mean utilisation and sample count inside the spans (one GPU)."""
    inside = [s for s in samples if s[1] == gpu and any(a <= s[0] <= b for a, b in spans)]
    if not inside:
        return {"gpu_samples": 0, "gpu_busy_fraction": None, "gpu_util_mean": None}
    return {"gpu_samples": len(inside), "gpu_busy_fraction": round(sum(s[2] > 0 for s in inside) / len(inside), 3),
            "gpu_util_mean": round(statistics.mean(s[2] for s in inside), 1)}  # fmt: skip


def loop_figures(stamps: dict, n: int) -> dict:
    """Batch loop and epoch medians from the second epoch on (bench/gpu/epoch_rate.py), images/second."""
    from epoch_rate import median_times

    loop, epoch = median_times(stamps)
    return {"loop_s": round(loop, 3), "epoch_s": round(epoch, 3), "img_s": round(n / loop, 1),
            "epochs_timed": len(stamps["start"]) - 1}  # fmt: skip


def e2e(a: argparse.Namespace) -> None:
    probe = json.loads(a.probe.read_text()) if a.probe.is_file() else {}
    log = a.log.read_text(errors="replace") if a.log.is_file() else ""
    figures: dict[str, Any] = {"images": a.n}
    why = []
    passed = re.search(r"AMP check passed on (\S+): (\S+)", log)
    failed = re.search(r"AMP check failed on [^\n]*", log)
    figures["amp_check"] = passed.group(0) if passed else failed.group(0) if failed else None
    if not passed or not passed.group(1).startswith(a.amp_device) or passed.group(2) != a.precision:
        why.append(f"no 'AMP check passed on {a.amp_device}: {a.precision}' in the log")
    figures["precision"] = probe.get("precision")
    if probe.get("precision") != a.precision:
        why.append(f"trained in {probe.get('precision')}, not {a.precision}")
    for key in ("device", "loader_workers", "peak_allocated_mib", "peak_reserved_mib"):
        figures[key] = round(probe[key], 1) if isinstance(probe.get(key), float) else probe.get(key)
    config = a.run_dir / "config.yaml"
    if config.is_file():
        m = re.search(r"^workers: (.*)$", config.read_text(), re.M)
        figures["workers_setting"] = m.group(1) if m else None
    if len(probe.get("start", [])) >= 2 and len(probe.get("end", [])) >= 2:
        figures.update(loop_figures(probe, a.n))
        spans = list(zip(probe["start"][1:], probe["val_start"][1:], strict=False))
        samples = gpu_samples(a.gpu_csv)
        figures.update(busy(samples, spans))
        during = [s[3] for s in samples if s[1] == 0 and probe["start"][0] <= s[0] <= probe["end"][-1]]
        figures["peak_memory_sampled_mib"] = max(during) if during else None
        figures["start_s"] = round(probe["start"][0] - a.t0, 1)  # stage start to the first epoch
    else:
        why.append("fewer than 2 epochs stamped")
    emit(a.out, figures, "; ".join(why) or None)


def yolov5(a: argparse.Namespace) -> None:
    log = a.log.read_text(errors="replace") if a.log.is_file() else ""
    figures: dict[str, Any] = {"images": a.n}
    amp = re.search(r"AMP: [^\n]*", log)
    figures["amp"] = amp.group(0).strip() if amp else None
    if not a.stamps.is_file():
        emit(a.out, figures, "no stamps from YOLOv5's run")
    stamps = json.loads(a.stamps.read_text())
    figures.update(loop_figures(stamps, a.n))
    ours = json.loads(a.ours.read_text()) if a.ours and a.ours.is_file() else {}
    if len(ours.get("start", [])) >= 2:
        o = loop_figures(ours, a.n)
        figures["ours_img_s"] = o["img_s"]
        figures["ours_over_yolov5_img_s"] = round(o["img_s"] / figures["img_s"], 3)
        figures["ours_over_yolov5_epoch_time"] = round(o["epoch_s"] / figures["epoch_s"], 3)
    else:
        figures["ours_over_yolov5_img_s"] = None  # stage 1 brought no stamps
    emit(a.out, figures)


def train_step(a: argparse.Namespace) -> None:
    """Rows of bench/train_step.py's table: model, imgsz, ours img/s, bare img/s, ratio [95 % CI]."""
    rows = []
    pattern = r"^(yolov5\w)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)(?: \[(-?[\d.]+), (-?[\d.]+)\])? \(rounds ([^)]*)\)"
    for m in re.finditer(pattern, a.log.read_text(errors="replace"), re.M):
        rows.append({"model": m[1], "imgsz": int(m[2]), "ours_img_s": float(m[3]), "bare_img_s": float(m[4]),
                     "ours_over_bare": float(m[5]), "ci95": [float(m[6]), float(m[7])] if m[6] else None,
                     "rounds": [float(r) for r in m[8].split(", ")]})  # fmt: skip
    device = re.search(r"^device (\S+),", a.log.read_text(errors="replace"), re.M)
    emit(a.out, {"device": device.group(1) if device else None, "rows": rows}, None if rows else "no result rows")


def final_row(run_dir: Path) -> dict[str, Any] | None:
    from detector.callbacks.results_csv import read_results

    path = run_dir / "results.csv"
    if not path.is_file():
        return None
    rows = read_results(path)
    last = {k: round(rows[-1][k], 5) for k in RESULT_COLUMNS if k in rows[-1]}
    last["epochs"] = len(rows)
    last["mAP_0.5_by_epoch"] = [round(r.get("metrics/mAP_0.5", 0.0), 4) for r in rows]
    return last


def amp_fp32(a: argparse.Namespace) -> None:
    amp, fp32 = final_row(a.amp), final_row(a.fp32)
    probe_a = json.loads((a.amp / "probe.json").read_text()) if (a.amp / "probe.json").is_file() else {}
    probe_f = json.loads((a.fp32 / "probe.json").read_text()) if (a.fp32 / "probe.json").is_file() else {}
    figures: dict[str, Any] = {"amp_precision": probe_a.get("precision"), "fp32_precision": probe_f.get("precision"),
                               "amp": amp, "fp32": fp32}  # fmt: skip
    if amp and fp32:
        figures["amp_minus_fp32"] = {k: round(amp[k] - fp32[k], 5) for k in RESULT_COLUMNS if k in amp and k in fp32}
    why = None
    if not (amp and fp32):
        why = f"results.csv missing: amp {amp is not None}, fp32 {fp32 is not None}"
    elif probe_a.get("precision") != a.precision or probe_f.get("precision") != "32-true":
        why = f"precisions {probe_a.get('precision')} / {probe_f.get('precision')}, not {a.precision} / 32-true"
    emit(a.out, figures, why)


def evolve(a: argparse.Namespace) -> None:
    from detector.evolve import history

    figures: dict[str, Any] = {}
    csv = a.sweep / "evolve.csv"
    if not csv.is_file():
        emit(a.out, figures, "no evolve.csv")
    keys, values = history.read_csv(csv)
    figures["children"] = len(values)
    figures["results"] = [dict(zip(keys[:7], (round(float(v), 5) for v in row[:7]), strict=True)) for row in values]
    probes = []
    for job in sorted((p for p in a.sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        f = job / "probe.json"
        p = json.loads(f.read_text()) if f.is_file() else {}
        probes.append({"job": job.name, "device": p.get("device"), "forked": p.get("forked"),
                       "cuda_initialized": p.get("cuda_initialized"), "precision": p.get("precision")})  # fmt: skip
    figures["children_probes"] = probes
    why = []
    if len(values) != a.children:
        why.append(f"{len(values)} children in evolve.csv, not {a.children}")
    if len(values) and not (values[:, 4] > 0).all():
        why.append("a child has no validation box loss (it did not validate)")
    for p in probes:
        if not str(p["device"]).startswith(a.device):
            why.append(f"child {p['job']} trained on {p['device']}, not {a.device}")
        if not p["forked"] and a.preload:
            why.append(f"child {p['job']} was not forked from the preloading server")
    if len(probes) != a.children:
        why.append(f"{len(probes)} child probes, not {a.children}")
    emit(a.out, figures, "; ".join(why) or None)


def ranks(a: argparse.Namespace) -> None:
    if a.skip:
        emit(a.out, {}, skipped=a.skip)
    lines = [json.loads(x) for x in a.probe.read_text().splitlines()] if a.probe.is_file() else []
    by_rank: dict[int, list[dict]] = {}
    for rec in lines:
        by_rank.setdefault(rec["rank"], []).append(rec)
    figures: dict[str, Any] = {"ranks": sorted(by_rank), "records": {r: len(v) for r, v in by_rank.items()}}
    if sorted(by_rank) != list(range(a.world)):
        emit(a.out, figures, f"records from ranks {sorted(by_rank)}, not {list(range(a.world))}")
    r0 = by_rank[0]
    differing: dict[str, int] = {}
    compared = 0
    for r in range(1, a.world):
        if [(x["at"], x["epoch"], x["step"]) for x in by_rank[r]] != [(x["at"], x["epoch"], x["step"]) for x in r0]:
            emit(a.out, figures, f"rank {r} recorded other points than rank 0")
        for x, y in zip(r0, by_rank[r], strict=True):
            for name, h in x["hashes"].items():
                compared += 1
                if y["hashes"].get(name) != h:
                    differing[f"{x['at']}@{x['step']}:{name}"] = r
    figures.update(points=[f"{x['at']}@epoch{x['epoch']}" for x in r0], tensors_compared=compared,
                   tensors_differing=len(differing), first_differing=list(differing)[:8])  # fmt: skip
    running = sum(".running_" in k for k in differing)
    why = f"{len(differing)} tensor hashes differ between ranks ({running} BatchNorm statistics)" if differing else None
    if not compared:
        why = "nothing compared"
    emit(a.out, figures, why)


def record(a: argparse.Namespace) -> None:
    """One line of stages.jsonl: stage, name, status, wall time, cap and the stage's figures."""
    figures = {}
    if a.figures.is_file():
        try:
            figures = json.loads(a.figures.read_text())
        except json.JSONDecodeError:
            figures = {"figures_unreadable": a.figures.read_text()[:200]}
    status = {0: "ok", 3: "skipped", 124: "timeout", 137: "timeout"}.get(a.rc, "failed")
    if a.rc == -1:
        status, figures["why"] = "skipped", a.note
    line = {"stage": a.stage, "name": a.name, "status": status, "rc": a.rc, "wall_s": round(a.wall, 1),
            "cap_s": a.cap, **figures, "finished": time.strftime("%H:%M:%S")}  # fmt: skip
    with open(a.stages, "a") as f:
        f.write(json.dumps(line, default=str) + "\n")
    print(json.dumps(line, default=str))


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("preflight")
    p.add_argument("--site", type=Path, required=True)
    p.add_argument("--tree", type=Path, default=Path.cwd())
    p.add_argument("--t-start", type=float, required=True)
    p.add_argument("--smi")
    p.add_argument("--need-cuda", action="store_true")
    p = sub.add_parser("e2e")
    p.add_argument("--probe", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--gpu-csv", type=Path)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--precision", default="16-mixed")
    p.add_argument("--amp-device", default="cuda")
    p.add_argument("--t0", type=float, default=0.0)
    p = sub.add_parser("yolov5")
    p.add_argument("--stamps", type=Path, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--ours", type=Path)
    p.add_argument("--n", type=int, required=True)
    p = sub.add_parser("train_step")
    p.add_argument("--log", type=Path, required=True)
    p = sub.add_parser("amp_fp32")
    p.add_argument("--amp", type=Path, required=True)
    p.add_argument("--fp32", type=Path, required=True)
    p.add_argument("--precision", default="16-mixed")
    p = sub.add_parser("evolve")
    p.add_argument("--sweep", type=Path, required=True)
    p.add_argument("--children", type=int, default=2)
    p.add_argument("--device", default="cuda")
    p.add_argument("--preload", type=int, default=1)
    p = sub.add_parser("ranks")
    p.add_argument("--probe", type=Path, required=True)
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--skip", default="")
    p = sub.add_parser("record")
    p.add_argument("--stage", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--wall", type=float, required=True)
    p.add_argument("--cap", type=int, required=True)
    p.add_argument("--figures", type=Path, required=True)
    p.add_argument("--stages", type=Path, required=True)
    p.add_argument("--note", default="")
    for p in sub.choices.values():
        if "--out" not in p._option_string_actions and p.prog.split()[-1] != "record":
            p.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    {"preflight": preflight, "e2e": e2e, "yolov5": yolov5, "train_step": train_step, "amp_fp32": amp_fp32,
     "evolve": evolve, "ranks": ranks, "record": record}[a.cmd](a)  # fmt: skip


if __name__ == "__main__":
    main()
