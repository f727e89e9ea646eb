"""`python -m detector.predict`: the written boxes are the model's own forward + NMS; folders, globs and videos;
unreadable files are skipped; a missing source is one clear line."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from detector import CONF_DIR
from detector.checkpoint_file import load_checkpoint, model_from_checkpoint
from detector.nms import non_max_suppression
from detector.predict import SourceError, predict


def compose_predict(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="predict", overrides=overrides)


def read_txt(path) -> np.ndarray:
    return np.loadtxt(path, ndmin=2).reshape(-1, 6)


def test_predicted_boxes_are_the_models_forward_and_nms(trained_run, tmp_path):
    ckpt = trained_run / "weights" / "last.ckpt"
    val = sorted((trained_run.parent / "shapes" / "images" / "val").iterdir())[0]
    im = cv2.resize(cv2.imread(str(val)), (64, 64))  # a stride multiple at imgsz 64: no letterbox padding at all
    src = tmp_path / "src"
    src.mkdir()
    cv2.imwrite(str(src / "a.png"), im)
    out = tmp_path / "out"
    # the tiny 1-epoch model is unsure of everything: a low threshold gives boxes to compare
    dets = predict(compose_predict([f"ckpt={ckpt}", f"source={src / 'a.png'}", f"run_dir={out}", "conf=0.001",
                                    "max_det=50", "device=cpu"]))  # fmt: skip
    module, _ = model_from_checkpoint(load_checkpoint(ckpt))
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)))[None].float() / 255
        ref = non_max_suppression(module.model.eval()(x)[0], conf_thres=0.001, iou_thres=0.45, max_det=50,
                                  multi_label=False)[0].numpy()  # fmt: skip
    ref[:, :4] = ref[:, :4].clip(0, 64)  # boxes are clipped to the image, as YOLOv5's scale_boxes does
    assert len(ref) > 0 and np.allclose(dets["a"], ref, atol=1e-4)
    txt = read_txt(out / "labels" / "a.txt")
    xc, yc = (ref[:, 0] + ref[:, 2]) / 128, (ref[:, 1] + ref[:, 3]) / 128
    expected = np.stack([ref[:, 5], xc, yc, (ref[:, 2] - ref[:, 0]) / 64, (ref[:, 3] - ref[:, 1]) / 64, ref[:, 4]], 1)
    assert np.allclose(txt, expected, atol=1e-4)
    drawn = cv2.imread(str(out / "a.png"))
    assert drawn.shape == im.shape and not np.array_equal(drawn, im)  # boxes drawn onto the image


def test_folder_glob_and_video_sources(trained_run, tmp_path, caplog):
    ckpt = trained_run / "weights" / "last.ckpt"
    src = tmp_path / "src"
    src.mkdir()
    for i, f in enumerate(sorted((trained_run.parent / "shapes" / "images" / "val").iterdir())[:2]):
        cv2.imwrite(str(src / f"im{i}.jpg"), cv2.resize(cv2.imread(str(f)), (80, 60)))
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (src / "notes.txt").write_text("not an image")
    video = cv2.VideoWriter(str(src / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    for k in range(3):
        video.write(np.full((64, 96, 3), 60 * k, np.uint8))
    video.release()
    with caplog.at_level(logging.WARNING):
        dets = predict(compose_predict([f"ckpt={ckpt}", f"source={src}", f"run_dir={tmp_path / 'out'}", "conf=0.01",
                                        "device=cpu"]))  # fmt: skip
    assert sorted(dets) == ["clip_0", "clip_1", "clip_2", "im0", "im1"] and "broken.jpg" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == [f"{k}.txt" for k in sorted(dets)]
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
    globbed = predict(compose_predict([f"ckpt={ckpt}", f"source={src}/im*.jpg", f"run_dir={tmp_path / 'g'}",
                                       "save_img=false", "device=cpu"]))  # fmt: skip
    assert sorted(globbed) == ["im0", "im1"] and not list((tmp_path / "g").glob("*.jpg"))


def test_a_missing_source_is_named(trained_run, tmp_path):
    ckpt = trained_run / "weights" / "last.ckpt"
    with pytest.raises(SourceError, match="no such file or folder"):
        predict(compose_predict([f"ckpt={ckpt}", f"source={tmp_path / 'nothing'}", f"run_dir={tmp_path}"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        predict(compose_predict([f"ckpt={ckpt}", f"source={tmp_path / 'empty'}", f"run_dir={tmp_path}"]))
