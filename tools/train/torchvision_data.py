"""A YOLO dataset split as torchvision detection samples, and COCO mAP of a detector on it.

Images stay at their own size: torchvision's detectors resize inside the model (min_size/max_size) and
map boxes back to the original pixels, so predictions compare directly with the labels. Label ids are
class index + 1 (0 is the detectors' background), the same ids tools.dataset gives COCO categories, so
one ground-truth JSON from tools.dataset.coco serves pycocotools unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms import v2
from tqdm import tqdm

from tools.dataset.coco import yolo_to_coco
from tools.dataset.yolo import YoloDataset, open_dataset, read_boxes

Sample = tuple[torch.Tensor, dict[str, Any]]


class YoloDetection(Dataset[Sample]):
    """(float image CHW in [0, 1], {"boxes": xyxy pixels, "labels": class + 1, "image_id"}) per image."""

    def __init__(self, ds: YoloDataset, augment: bool) -> None:
        self.ds = ds
        self.images = ds.images()  # the order yolo_to_coco numbers them in: image_id = index + 1
        self.transform = v2.Compose([
            *([v2.RandomHorizontalFlip(0.5), v2.RandomVerticalFlip(0.5)] if augment else []),
            v2.ToDtype(torch.float32, scale=True),
            v2.SanitizeBoundingBoxes(min_size=1.0),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        path = self.images[index]
        image = decode_image(str(path), mode=ImageReadMode.RGB)
        height, width = image.shape[-2:]
        labels = read_boxes(self.ds.label_path(path))
        xyxy = torch.tensor([b.xyxy for b in labels], dtype=torch.float32).reshape(-1, 4) * torch.tensor([width, height] * 2)
        target = {
            "boxes": tv_tensors.BoundingBoxes(xyxy.clamp(min=0), format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([b.class_id + 1 for b in labels], dtype=torch.int64),
        }
        image, target = self.transform(tv_tensors.Image(image), target)
        target["boxes"] = target["boxes"].as_subclass(torch.Tensor)
        target["image_id"] = index + 1
        return image.as_subclass(torch.Tensor), target


def _collate(batch: list[Sample]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def loader(data: Path, split: str, batch: int, workers: int, train: bool, seed: int) -> DataLoader[Sample]:
    ds = open_dataset(data, split=split)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(YoloDetection(ds, augment=train), batch_size=batch, shuffle=train, num_workers=workers,
                      collate_fn=_collate, generator=generator, drop_last=False)


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: DataLoader[Sample], device: torch.device) -> dict[str, float]:
    """COCO mAP@0.5 and mAP@0.5:0.95 (pycocotools) of ``model`` on the loader's split."""
    from tools.evaluate.metrics import evaluate as coco_evaluate

    dataset: YoloDetection = val.dataset  # type: ignore[assignment]
    model.eval()
    results: list[dict[str, Any]] = []
    for images, targets in tqdm(val, desc="val", unit="batch", leave=False, disable=None):
        outputs = model([im.to(device) for im in images])
        for out, target in zip(outputs, targets, strict=True):
            xyxy = out["boxes"].cpu()
            xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1)
            for box, score, label in zip(xywh.tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True):
                results.append({"image_id": target["image_id"], "category_id": int(label), "bbox": box,
                                "score": float(score)})
    gt_json = yolo_to_coco(dataset.ds, offset=1, progress=False)
    if not results or not gt_json["annotations"]:
        return {"map50": 0.0, "map50_95": 0.0}
    stats = coco_evaluate(gt_json, results, conf=0.0).stats  # tools.evaluate's pycocotools run
    return {"map50": max(stats[1], 0.0), "map50_95": max(stats[0], 0.0)}

