"""Dataset yaml parsing (YOLOv5 `--data` format), image discovery and image-to-label path mapping."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from detector.data.images import IMG_FORMATS, is_image_file

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("shapes",)


@dataclass
class DataConfig:
    """A parsed dataset yaml; every source path is absolute."""

    yaml_file: Path
    path: Path
    train: list[Path]
    val: list[Path]
    test: list[Path]
    names: dict[int, str]
    nc: int


def load_data_config(data: str | Path, datasets_dir: str | Path, cwd: str | Path | None = None) -> DataConfig:
    """Parse a built-in dataset name (`shapes`) or a YOLOv5 dataset yaml path into a DataConfig.

    Relative `path:` values are tried against `cwd`, the yaml's folder and `datasets_dir`, in that order;
    train/val/test entries are relative to `path`. A `download:` key is never executed.
    """
    cwd = Path(cwd if cwd is not None else os.getcwd()).expanduser()
    datasets_dir = Path(datasets_dir).expanduser()
    if not datasets_dir.is_absolute():
        datasets_dir = cwd / datasets_dir
    if str(data) in BUILTIN_DATASETS and not (cwd / str(data)).is_file():
        from detector.data.shapes import ensure_shapes_dataset

        yaml_file = ensure_shapes_dataset(datasets_dir / str(data))
    else:
        yaml_file = Path(data).expanduser()
        if not yaml_file.is_absolute():
            yaml_file = cwd / yaml_file
    if not yaml_file.is_file():
        raise FileNotFoundError(
            f"data: dataset yaml '{data}' not found (looked at {yaml_file}); "
            f"give a YOLOv5 dataset yaml path or one of the built-in names {list(BUILTIN_DATASETS)}"
        )
    return parse_data_yaml(yaml_file, datasets_dir=datasets_dir, cwd=cwd)


def parse_data_yaml(yaml_file: Path, datasets_dir: Path, cwd: Path) -> DataConfig:
    """Read and validate one dataset yaml file (see load_data_config)."""
    yaml_file = yaml_file.resolve()
    try:
        d = yaml.safe_load(yaml_file.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"dataset yaml {yaml_file} is not valid YAML: {e}") from e
    if not isinstance(d, dict):
        raise ValueError(f"dataset yaml {yaml_file} must be a mapping with train/val/names keys, got {type(d)}")
    for key in ("train", "val", "names"):
        if not d.get(key):
            raise ValueError(f"dataset yaml {yaml_file}: required key '{key}:' is missing or empty")
    if d.get("download"):
        log.warning(
            "dataset yaml %s: ignoring 'download:' (downloads are never run; fetch the data yourself)",
            yaml_file,
        )

    names = _parse_names(d["names"], yaml_file)
    if d.get("nc") is not None and int(d["nc"]) != len(names):
        raise ValueError(f"dataset yaml {yaml_file}: nc: {d['nc']} does not match the {len(names)} entries of names:")

    bases = [cwd, yaml_file.parent, datasets_dir]
    if d.get("path"):
        root = _resolve_root(str(d["path"]), bases, yaml_file)
        bases = [root]
    else:
        root = yaml_file.parent
    splits: dict[str, list[Path]] = {}
    for key in ("train", "val", "test"):
        entries = _as_list(d.get(key))
        paths = [_resolve_entry(e, bases) for e in entries]
        for e, p in zip(entries, paths, strict=True):
            if not p.exists():
                where = ", ".join(str(b) for b in bases)
                if key == "test":
                    log.warning(
                        "dataset yaml %s: test entry '%s' not found (relative to %s); skipped",
                        yaml_file,
                        e,
                        where,
                    )
                else:
                    raise FileNotFoundError(
                        f"dataset yaml {yaml_file}: '{key}:' entry '{e}' not found (looked at {p}; relative "
                        f"entries are resolved against {where})"
                    )
        splits[key] = [p for p in paths if p.exists()]
    return DataConfig(
        yaml_file=yaml_file,
        path=root,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        names=names,
        nc=len(names),
    )


def _parse_names(names: Any, yaml_file: Path) -> dict[int, str]:
    if isinstance(names, (list, tuple)):
        return {i: str(n) for i, n in enumerate(names)}
    if isinstance(names, dict):
        try:
            out = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"dataset yaml {yaml_file}: names: keys must be integers, e.g. '2: car' ({e})") from e
        if sorted(out) != list(range(len(out))):
            raise ValueError(
                f"dataset yaml {yaml_file}: names: keys must be 0..{len(out) - 1} with no gaps, got {sorted(out)}"
            )
        return dict(sorted(out.items()))
    raise ValueError(f"dataset yaml {yaml_file}: names: must be a list or a {{id: name}} mapping, got {names!r}")


def _as_list(value: Any) -> list[str]:
    if not value:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _resolve_root(value: str, bases: list[Path], yaml_file: Path) -> Path:
    p = Path(value).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        # The last candidate covers YOLOv5 yamls written for its repo layout (path: ../datasets/coco128).
        candidates = [b / p for b in bases] + [bases[-1] / p.name]
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(f"dataset yaml {yaml_file}: 'path: {value}' not found; tried {tried}")


def _resolve_entry(entry: str, bases: list[Path]) -> Path:
    p = Path(entry).expanduser()
    if p.is_absolute():
        return p
    for b in bases:
        c = (b / p).resolve()
        if c.exists():
            return c
        if entry.startswith("../") and (b / entry[3:]).exists():  # YOLOv5 also tries without the leading ../
            return (b / entry[3:]).resolve()
    return (bases[0] / p).resolve()


def list_image_files(sources: Iterable[str | Path]) -> list[str]:
    """Image files under folders (recursive) and in txt lists, sorted and de-duplicated.

    Txt lines that are relative (with or without './') are relative to the txt file's folder.
    """
    files: list[str] = []
    if isinstance(sources, (str, Path)):  # one source, not its characters (a str would walk "/")
        sources = [sources]
    sources = [Path(s).expanduser() for s in sources]
    for src in sources:
        if src.is_dir():
            for folder, _, names in os.walk(src.absolute(), followlinks=True):
                files += [os.path.join(folder, n) for n in names if is_image_file(n)]
        elif src.is_file():
            skipped = 0
            for line in src.read_text(encoding="utf-8-sig").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                p = Path(line[2:] if line.startswith("./") else line).expanduser()
                if not p.is_absolute():
                    p = src.parent / p
                if is_image_file(p):
                    files.append(os.path.normpath(str(p.absolute())))
                else:
                    skipped += 1
            if skipped:
                log.warning("%s: %d lines without an image extension skipped", src, skipped)
        else:
            raise FileNotFoundError(f"image source {src} does not exist")
    files = sorted(set(files))
    if not files:
        raise FileNotFoundError(
            f"no images found in {', '.join(str(s) for s in sources)} (formats: {', '.join(IMG_FORMATS)})"
        )
    return files


def img2label_paths(im_files: Iterable[str]) -> list[str]:
    """Label path of each image: the last '/images/' becomes '/labels/' and the extension '.txt'."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    for f in im_files:
        f = str(f)
        head, sep, tail = f.rpartition(sa)
        f = head + sb + tail if sep else f
        out.append(os.path.splitext(f)[0] + ".txt")
    return out
