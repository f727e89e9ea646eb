"""Every hyp key takes effect in one module: searching for its quoted name finds that module and no other."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

import yaml

from detector import CONF_DIR
from detector.data.recipe import AUGMENT_HYP_KEYS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "src" / "detector").rglob("*.py"), *(ROOT / "callbacks").rglob("*.py")])

OWNERS = {
    **dict.fromkeys(
        ["lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum", "warmup_bias_lr", "anchors"],
        "src/detector/module.py",
    ),
    **dict.fromkeys(["box", "cls", "cls_pw", "obj", "obj_pw", "anchor_t", "fl_gamma"], "src/detector/loss.py"),
    **dict.fromkeys(AUGMENT_HYP_KEYS, "src/detector/data/recipe.py"),  # hsv_*, degrees ... mosaic, mixup, copy_paste
    "iou_t": None,  # unused by YOLOv5 v6+ too; kept so YOLOv5 hyp files load
}
# The same word as a torch param-group key, a plot label, the model yaml's key or the Detect buffer; the check
# that refuses hyp.anchors without AutoAnchor; a YOLOv5 file's model config; evolution's column rule (anchors
# appended as 3 when null) and Optuna's search space (anchors as an integer). Not where the hyp value takes effect.
NOT_HYP = {("anchors", "src/detector/evolve/space.py"), ("anchors", "src/detector/evolve/optuna_space.py"),
           ("weight_decay", "src/detector/optim.py"), ("momentum", "src/detector/schedule.py"),
           ("momentum", "src/detector/plots/lr.py"), ("anchors", "src/detector/models/builder.py"),
           ("anchors", "src/detector/models/detect.py"), ("anchors", "src/detector/models/yolo.py"),
           ("anchors", "src/detector/run_config.py"), ("anchors", "src/detector/yolov5_weights.py")}  # fmt: skip
# Where the config passes a hyp value to a callback (conf/callbacks/default.yaml), as YOLOv5 shares them.
SHARED_WITH_AUTOANCHOR = {"anchor_t": "thr: ${hyp.anchor_t}"}


def string_literals(path: Path) -> set[str]:
    """Exact string literals of a module (docstrings and comments mention keys in prose: longer strings)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    out = set()
    for tok in tokens:
        if tok.type == tokenize.STRING and tok.string[:1] in "'\"":
            out.add(tok.string.strip("'\""))
    return out


def test_every_scratch_key_has_one_owner_module():
    keys = list(yaml.safe_load((Path(CONF_DIR) / "hyp" / "scratch.yaml").read_text()))
    assert sorted(keys) == sorted(OWNERS)
    literals = {str(p.relative_to(ROOT)): string_literals(p) for p in SOURCES}
    for key in keys:
        found = {f for f, lits in literals.items() if key in lits and (key, f) not in NOT_HYP}
        expected = {OWNERS[key]} if OWNERS[key] else set()
        assert found == expected, f"hyp key {key!r} is read in {sorted(found)}, expected {sorted(expected)}"
    callbacks = (Path(CONF_DIR) / "callbacks" / "default.yaml").read_text()
    assert all(line in callbacks for line in SHARED_WITH_AUTOANCHOR.values())
    assert [k for k in keys if f"${{hyp.{k}}}" in callbacks] == list(SHARED_WITH_AUTOANCHOR)
