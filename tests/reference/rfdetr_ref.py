"""Reference side of the RF-DETR equality test; runs in the training interpreter (STREAMD_TRAIN_PYTHON), not in .venv.

  python tests/reference/rfdetr_ref.py export --out CACHE/rfdetr-nano.onnx
  python tests/reference/rfdetr_ref.py predict --model CACHE/rfdetr-nano.onnx --threshold 0.5 --out ref.json IMAGE...

`export` builds ``RFDETRNano(pretrain_weights=None, resolution=256)`` (seed 0; random init, nothing
downloaded: with no pretrained weights rfdetr does not fetch the DINOv2 backbone either, and the Hugging
Face libraries are set offline here) and exports it with rfdetr's own exporter through
tools.export.frameworks.export_rfdetr.

Two properties of a random init would make it a poor test subject, and are changed:
- A fresh RF-DETR scores every (query, class) pair near 0.01: its class layers (``class_embed`` and the
  two-stage ``enc_out_class_embed``) start with the focal-loss prior bias -log(99), so a 1e-3 score
  tolerance would compare nothing. Their bias is zeroed and their weights scaled by --gain; scores then
  differ per query and class, so top-k selection and thresholds do real work. The network has no
  BatchNorm (LayerNorm only), so nothing else needs re-estimating.
- The two-stage encoder keeps the 300 best of its tokens as decoder queries. Untrained, all tokens score
  within ~0.1 of each other, 6e-5 apart at the cut at 384 px (576 tokens): float noise of 2e-6 (PyTorch
  against ONNX Runtime, even on an identical input tensor) then swaps a query on some frames, and the
  swapped query's detection differs wholesale. A trained model scores the tokens at the cut as background,
  far below any threshold. At 256 px the encoder has 16 x 16 = 256 tokens, all kept, so there is no cut;
  the architecture and the pre-processing are unchanged. Nano's own 384 px is compared too, frame by frame:
  `predict --record-selection` writes the encoder's token scores and kept tokens, which the test reads from
  the ONNX graph's TopK as well; frames that kept the same queries must give the same detections, and a token
  kept by one side only must sit within a float tie of the cut.

`predict` rebuilds the same model (same seed and changes; a fingerprint of the weights, stored in the
ONNX metadata at export, proves it is the same) and runs rfdetr's own ``model.predict`` on the image
files — PyTorch, not the ONNX file — writing per-image detections (xyxy in source pixels, confidence,
class id, class name) to JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

# rfdetr imports transformers (Dinov2 config classes); nothing may reach the Hugging Face hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from tools.export.metadata import read_metadata  # noqa: E402

FINGERPRINT_KEY = "streamd_reference_fingerprint"
RESOLUTION = 256  # 16 x 16 = 256 encoder tokens <= 300 queries: every token becomes a query (see above)


def build(gain: float, resolution: int):
    """The seeded RFDETRNano with its class layers spread (see the module docstring)."""
    import torch
    from rfdetr import RFDETRNano

    torch.manual_seed(0)
    model = RFDETRNano(pretrain_weights=None, resolution=resolution, device="cpu")
    detector = model.model.model
    layers = [detector.class_embed, *(getattr(detector.transformer, "enc_out_class_embed", None) or [])]
    with torch.no_grad():
        for layer in layers:
            layer.bias.zero_()
            layer.weight.mul_(gain)
    return model


def fingerprint(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.model.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def export(args: argparse.Namespace) -> int:
    from tools.export.frameworks import export_rfdetr, write_metadata

    model = build(args.gain, args.imgsz)
    path = export_rfdetr(model, args.out, args.imgsz)
    names = json.loads(read_metadata(path)["names"])
    write_metadata(path, "rfdetr", args.imgsz, names,
                   {FINGERPRINT_KEY: fingerprint(model), "streamd_reference_gain": str(args.gain)})
    print(f"{path}: RFDETRNano, {len(names)} logit slots, fingerprint {fingerprint(model)}")
    return 0


class _TopkRecorder:
    """Stands in for ``torch`` inside rfdetr's transformer module and records its top-k calls: the two-stage
    encoder's choice of which tokens become decoder queries (the token scores and the indices kept)."""

    def __init__(self, torch_module):  # type: ignore[no-untyped-def]
        self._torch = torch_module
        self.calls: list[dict[str, list]] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._torch, name)

    def topk(self, scores, k, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = self._torch.topk(scores, k, *args, **kwargs)
        self.calls.append({"scores": scores.detach().reshape(-1).tolist(),
                           "indices": sorted(result[1].detach().reshape(-1).tolist())})
        return result


def predict(args: argparse.Namespace) -> int:
    meta = read_metadata(args.model)
    size = int(meta["streamd_input_size"].split(",")[0])
    model = build(float(meta["streamd_reference_gain"]), size)
    if fingerprint(model) != meta.get(FINGERPRINT_KEY):
        print(f"the rebuilt model's weights differ from those exported to {args.model} "
              f"({fingerprint(model)} != {meta.get(FINGERPRINT_KEY)}); delete the file to re-export", file=sys.stderr)
        return 1
    from PIL import Image

    recorder = None
    if args.record_selection:
        from rfdetr.models import transformer

        recorder = _TopkRecorder(transformer.torch)
        transformer.torch = recorder
    results = []
    for image in args.images:
        if recorder is not None:
            recorder.calls.clear()
        dets = model.predict(str(image), threshold=args.threshold, shape=(size, size), include_source_image=False)
        with Image.open(image) as im:
            width, height = im.size
        results.append({
            "image": str(image),
            "height": int(height),
            "width": int(width),
            "xyxy": dets.xyxy.tolist(),
            "confidence": dets.confidence.tolist(),
            "class_id": dets.class_id.astype(int).tolist(),
            "class_name": [str(n) for n in dets.data.get("class_name", [])],
        })
        if recorder is not None:
            assert len(recorder.calls) == 1, f"expected one encoder top-k per image, saw {len(recorder.calls)}"
            results[-1]["encoder_selection"] = recorder.calls[0]
    args.out.write_text(json.dumps(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--imgsz", type=int, default=RESOLUTION, help="input size (a multiple of 32)")
    ex.add_argument("--gain", type=float, default=1.0, help="multiplies the class-logit weights")
    pr = sub.add_parser("predict")
    pr.add_argument("--model", type=Path, required=True, help="the ONNX file `export` wrote")
    pr.add_argument("--threshold", type=float, default=0.5)
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--record-selection", action="store_true",
                    help="also write the two-stage encoder's token scores and the tokens it kept as queries")
    pr.add_argument("images", type=Path, nargs="+")
    args = parser.parse_args(argv)
    return {"export": export, "predict": predict}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
