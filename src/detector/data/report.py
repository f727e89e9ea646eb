"""What label verification found in a dataset: named counts of each bad-input kind and per-file messages."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# kind -> line template; {n} = files, {items} = rows. Order is the order of DatasetReport.lines().
KINDS: dict[str, str] = {
    "zero_byte": "{n} zero-byte image files dropped",
    "not_image": "{n} files with an image extension that are not readable images dropped",
    "bad_format": "{n} images in an unsupported format dropped",
    "too_small": "{n} images smaller than 10 px dropped",
    "corrupt_image": "{n} corrupt image files dropped",
    "jpeg_repaired": "{n} truncated JPEG files repaired in place",
    "jpeg_truncated": "{n} truncated JPEG files kept unchanged (set repair_jpeg=true to re-save them)",
    "exif_rotated": "{n} EXIF-rotated images (sizes corrected)",
    "wrong_columns": "{n} label files with a wrong column count, images dropped",
    "bad_label": "{n} unreadable label files (not numbers), images dropped",
    "negative": "{n} label files with negative values, images dropped",
    "out_of_range": "{n} label files with coordinates outside [0, 1], images dropped",
    "class_out_of_range": "{n} label files with a class id >= nc, images dropped",
    "duplicates": "{items} duplicate label rows removed ({n} files)",
    "empty_label": "{n} empty label files (images kept as background)",
    "missing_label": "{n} missing label files (images kept as background)",
}
DROPPING_KINDS = frozenset(
    {
        "zero_byte",
        "not_image",
        "bad_format",
        "too_small",
        "corrupt_image",
        "wrong_columns",
        "bad_label",
        "negative",
        "out_of_range",
        "class_out_of_range",
    }
)

# Kinds that are normal in real datasets: logged as counts at INFO level, not as warnings per file.
INFO_KINDS = frozenset({"empty_label", "missing_label", "exif_rotated"})


@dataclass
class DatasetReport:
    """Counts of images found/background/dropped and of each bad-input kind, with one message per file."""

    source: str = ""
    total: int = 0  # images examined
    found: int = 0  # images kept with a non-empty label file
    missing: int = 0  # images kept without a label file (background)
    empty: int = 0  # images kept with an empty label file (background)
    corrupt: int = 0  # images dropped
    counts: dict[str, int] = field(default_factory=dict)  # files per kind
    items: dict[str, int] = field(default_factory=dict)  # rows per kind (duplicates)
    messages: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, file, detail)

    def add(self, kind: str, file: str, detail: str = "", items: int = 0) -> None:
        """Record one file of the given kind."""
        if kind not in KINDS:
            raise KeyError(f"unknown report kind {kind!r}; known: {', '.join(KINDS)}")
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if items:
            self.items[kind] = self.items.get(kind, 0) + items
        self.messages.append((kind, file, detail))

    @property
    def backgrounds(self) -> int:
        return self.missing + self.empty

    @property
    def kept(self) -> int:
        return self.found + self.backgrounds

    def count(self, kind: str) -> int:
        """Files recorded under a kind (0 when none)."""
        return self.counts.get(kind, 0)

    def lines(self, kinds: Iterable[str] | None = None) -> list[str]:
        """One counted, named line per kind that occurred (optionally only `kinds`), in a fixed order."""
        wanted = set(KINDS if kinds is None else kinds)
        return [
            tpl.format(n=self.counts[k], items=self.items.get(k, 0))
            for k, tpl in KINDS.items()
            if self.counts.get(k, 0) > 0 and k in wanted
        ]

    def summary(self) -> str:
        """One line: found, background and dropped images."""
        return (
            f"Scanning {self.source}... {self.found} images with labels, {self.backgrounds} backgrounds, "
            f"{self.corrupt} corrupt (of {self.total})"
        )

    def file_messages(self, kinds: Iterable[str] | None = None) -> list[str]:
        """One line per recorded file (optionally only of `kinds`): 'file: detail'."""
        wanted = set(KINDS if kinds is None else kinds)
        return [
            f"{file}: {detail or KINDS[kind].split(' ', 1)[1]}"
            for kind, file, detail in self.messages
            if kind in wanted
        ]

    def save(self, path: str | Path) -> Path:
        """Write the summary, the counted lines and the per-file messages to a text file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = [self.summary(), *self.lines()]
        if self.messages:
            text += ["", "Files:", *self.file_messages()]
        path.write_text("\n".join(text) + "\n", encoding="utf-8")
        return path

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for caching."""
        return {
            "source": self.source,
            "total": self.total,
            "found": self.found,
            "missing": self.missing,
            "empty": self.empty,
            "corrupt": self.corrupt,
            "counts": dict(self.counts),
            "items": dict(self.items),
            "messages": [list(m) for m in self.messages],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetReport:
        """Inverse of to_dict."""
        return cls(
            source=str(d.get("source", "")),
            total=int(d["total"]),
            found=int(d["found"]),
            missing=int(d["missing"]),
            empty=int(d["empty"]),
            corrupt=int(d["corrupt"]),
            counts={str(k): int(v) for k, v in d.get("counts", {}).items()},
            items={str(k): int(v) for k, v in d.get("items", {}).items()},
            messages=[(str(a), str(b), str(c)) for a, b, c in d.get("messages", [])],
        )
