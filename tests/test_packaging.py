"""A plain (non-editable) install: the wheel carries conf/, so the config composes and the console script runs
from any folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_installs_with_its_configs_and_composes_outside_the_checkout(tmp_path):
    # Built from a copy: setuptools' build/ folder in the checkout could hold files deleted since (stale modules).
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "bench", "build", "dist", "outputs", "tests", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, src, ignore=skip)
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    run([*pip_wheel, str(src)], cwd=tmp_path)
    wheel = next(tmp_path.glob("detector-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"detector/conf/train.yaml", "detector/conf/hyp/scratch-low.yaml", "detector/conf/model/arch/yolov5.yaml",
            "detector/callbacks/ema.py"} <= set(names)  # fmt: skip

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    # The dependencies (torch, lightning, hydra, ...) come from this environment's site-packages, appended to the
    # path; its editable install of detector is not (a plain path entry runs no .pth hooks).
    purelib = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
                   .strip())  # fmt: skip
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = (
        "import detector; from pathlib import Path; from hydra import compose, initialize_config_dir;\n"
        "initialize_config_dir(config_dir=detector.CONF_DIR, version_base='1.3');\n"
        "cfg = compose('train', overrides=['model=yolov5s', 'hyp=scratch-high']);\n"
        "print(Path(detector.__file__).parent, detector.CONF_DIR, cfg.model.width_multiple, cfg.hyp.mixup)"
    )
    package, conf_dir, width, mixup = run([str(py), "-c", probe], cwd=away, env=env).split()
    assert Path(package).is_relative_to(venv) and Path(conf_dir) == Path(package) / "conf"
    assert (float(width), float(mixup)) == (0.5, 0.1)
    job = run([str(venv / "bin" / "detector-train"), "--cfg", "job", "epochs=3"], cwd=away, env=env)
    assert "epochs: 3" in job and "_target_: detector.module.DetectorModule" in job
