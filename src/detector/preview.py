"""`python -m detector.preview data=...`: look at the training data before training.

Writes labels.jpg, train_batch0..2.jpg (augmented batches with boxes and class names) and the dataset reports
into the Hydra run folder. Takes the same keys as `detector.train`.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from detector import CONF_DIR
from detector.data.config import load_data_config
from detector.models import DetectionModel
from detector.plots.batches import plot_images
from detector.plots.labels import plot_labels
from detector.run_config import prepare_config
from detector.train import build_datamodule

log = logging.getLogger(__name__)


def preview(cfg: DictConfig, out_dir: Path, cwd: str) -> list[Path]:
    """Build the data module from a composed config and save the pictures and reports into out_dir: labels.jpg and
    as many train batches as the dataset_plots callback draws (none when it is off)."""
    cfg = prepare_config(cfg)
    cfg.run_dir = str(out_dir)  # the preview's folder takes the run folder's place (dataset reports go there)
    data = load_data_config(cfg.data, cfg.datasets_dir, cwd)
    model = DetectionModel(OmegaConf.to_container(cfg.model, resolve=True), nc=data.nc)  # for its stride only
    dm = build_datamodule(cfg, data, stride=int(model.stride.max()))
    dm.prepare_data()
    dm.setup("fit")
    labels = np.concatenate([lb.reshape(-1, 5) for lb in dm.train_dataset.labels], 0)
    paths = [plot_labels(labels, dm.names, out_dir)]
    plots = cfg.callbacks.get("dataset_plots")
    n_batches = int(plots.n_batches) if plots else 0
    for i, (imgs, targets, files, _) in enumerate(islice(dm.train_dataloader(), n_batches)):
        paths.append(plot_images(imgs, targets, files, dm.names, out_dir / f"train_batch{i}.jpg"))
    paths += sorted(out_dir.glob("dataset_*.txt"))
    return paths


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    for p in preview(cfg, out_dir, get_original_cwd()):
        log.info("saved %s", p)


if __name__ == "__main__":
    main()
