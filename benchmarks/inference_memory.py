"""Peak memory of one image through CAM export and through predict, by image size: the figures behind
`export_cams.max_side`, `export_cams.attention_cache_mb` and `predict.max_side`.

Each measurement runs in a fresh process set up as a dask worker's (MALLOC_TRIM_THRESHOLD_=65536 and
labelgen's `prepare_worker_process`: one torch thread, glibc's buffer reuse), on the CPU. A cell is
the process's peak RSS (`ru_maxrss`), and in brackets what the image added to the process before it
(imports, model, image), and the seconds it took:
- export: the real shard task (`export_shard`: views, WeakTr CAMs, the cams.zarr shard write) for
  one photo with 3 tags, scales 1.0 and 1.2 without flips, one view a pass (as on a CPU);
- predict: `predict_probs` + `probs_to_mask` without the CRF, scales 1.0 and 1.75 without flips
  (default windows), and, with --crf, `crf_on_probs` over 3 labels at full size (the stage runs
  the CRF over the labels present in the argmax).

Cases: `bounded` uses the defaults of labelgen/config.py; `exact` switches max_side off (the lean
two-pass CAMs, the default attention cache); `no cache` is bounded with attention_cache_mb=0 (every
layer's maps recomputed: the least memory); `all maps` is export as it was before max_side (no
bound, every layer's attention maps kept, which the lean path does with an unlimited cache). Cases
whose estimated memory exceeds --limit-gb are not run and show their estimate instead.

Models: DeiT-Tiny with the shared weights (LABELGEN_WEIGHTS_DIR) and 20 classes (VOC), and the
DeiT-S architecture with random weights and 80 classes / 81 labels (COCO); memory does not depend on
weight values.

    python benchmarks/inference_memory.py                        # default table, ~10 min on 2 cores
    python benchmarks/inference_memory.py --exact-only --sizes 2016x1512 --limit-gb 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import SHARED, peak_rss_mb, print_table, use_shared_weights, write_result

SIZES = ("500x375", "640x480", "1024x768", "2016x1512", "4032x3024")
MODELS = {  # name: (timm architecture, weights, classes)
    "deit-tiny": ("deit_tiny_patch16_224", "hub:deit_tiny_patch16_224.fb_in1k", 20),
    "deit-s": ("deit_small_patch16_224", None, 80),
}
# The largest view decides the peak (one view a pass): 1.2 is the largest export scale of VOC and COCO,
# 1.75 the largest predict scale. Flips would double the time, not the peak.
EXPORT_SCALES = (1.0, 1.2)
PREDICT_SCALES = (1.0, 1.75)
UNBOUNDED = 10**9  # max_side off, or an attention cache that keeps every layer
GB = 2**30


def _photo(size: list[int]):
    """A coco128 photo resized to W×H: H×W×3 uint8."""
    import numpy as np
    from PIL import Image

    photo = sorted((SHARED / "data" / "coco128" / "images" / "train2017").glob("*.jpg"))[0]
    return np.asarray(Image.open(photo).convert("RGB").resize(tuple(size), Image.BICUBIC))


def probe_export(model: str, size: list[int], max_side: int, cache_mb: int) -> dict:
    """One W×H image through the export shard task, in this (fresh) process."""
    from PIL import Image

    from labelgen.config import ExportCamsParams
    from labelgen.data.manifest import ImageRecord
    from labelgen.models.cam_inference import save_cam_model
    from labelgen.models.weaktr import WeakTr, WeakTrConfig
    from labelgen.stages.export_cams import export_shard, stored_size
    from labelgen.store.sharded import StoreLayout, create_cam_store

    arch, weights, classes = MODELS[model]
    params = ExportCamsParams(
        scales=EXPORT_SCALES,
        flip=False,
        max_side=max_side,
        attention_cache_mb=cache_mb,
        precision="fp32",
        batch_size=1,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        save_cam_model(root / "model.pt", WeakTr(WeakTrConfig(arch, classes), weights))
        Image.fromarray(_photo(size)).save(root / "photo.png")
        record = ImageRecord("photo", str(root / "photo.png"), size[0], size[1], (1, 2, 3), None, "train", "")
        layout = StoreLayout(("photo",), (stored_size(record, 1, params.max_side),), 1)
        create_cam_store(root / "cams.zarr", layout, 3, {})
        base = peak_rss_mb()
        started = time.perf_counter()
        export_shard(params, root / "model.pt", [record], layout, 0, root / "cams.zarr", 10**9)
        return {"base_mb": base, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - started}


def probe_predict(model: str, size: list[int], max_side: int) -> dict:
    """One W×H image through predict_probs + probs_to_mask (no CRF), in this (fresh) process."""
    from labelgen.config import PredictParams
    from labelgen.models.segmenter import Segmenter, SegmenterConfig
    from labelgen.stages.predict import predict_probs, probs_to_mask

    arch, weights, classes = MODELS[model]
    segmenter = Segmenter(SegmenterConfig(arch, classes + 1), weights).eval()
    p = PredictParams(scales=PREDICT_SCALES, flip=False, crf=False, max_side=max_side, precision="fp32", device="cpu")
    image = _photo(size)
    base = peak_rss_mb()
    started = time.perf_counter()
    probs_to_mask(image, predict_probs(segmenter, image, p), p)
    return {"base_mb": base, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - started}


def probe_crf(size: list[int]) -> dict:
    """The predict CRF (default settings) over 3 labels of a W×H image, in this (fresh) process."""
    import numpy as np

    from labelgen.config import PredictParams
    from labelgen.numerics.crf import CrfParams, crf_on_probs

    image = _photo(size)
    probs = np.random.default_rng(0).dirichlet((1, 1, 1), size=(size[1] // 16 + 1, size[0] // 16 + 1))
    probs = np.kron(probs.transpose(2, 0, 1), np.ones((1, 16, 16)))[:, : size[1], : size[0]].astype(np.float32)
    base = peak_rss_mb()
    started = time.perf_counter()
    crf_on_probs(image, probs, CrfParams.of(PredictParams()))
    return {"base_mb": base, "peak_mb": peak_rss_mb(), "seconds": time.perf_counter() - started}


def estimate_export_gb(model: str, size: tuple[int, int], max_side: int, cache_mb: int) -> float:
    """Attention memory of the largest view: one layer's logits and weights and the fused map (3·H·N²
    float32), plus the maps the cache keeps (at most all L·H·N²)."""
    arch, _, classes = MODELS[model]
    heads = 3 if "tiny" in arch else 6
    fit = min(1.0, max_side / (max(EXPORT_SCALES) * max(size)))
    n = (round(size[0] * max(EXPORT_SCALES) * fit) // 16) * (round(size[1] * max(EXPORT_SCALES) * fit) // 16) + classes
    layer = heads * n * n * 4
    return (3 * layer + min(12 * layer, cache_mb * 2**20)) / GB


def estimate_predict_gb(model: str, size: tuple[int, int], max_side: int) -> float:
    """About four L-label float32 arrays at the working size (the sum, a resized pass, its flip, the result)."""
    scale = min(1.0, max_side / max(size))
    return 4 * (MODELS[model][2] + 1) * size[0] * size[1] * scale * scale * 4 / GB


PROBES = {"export": probe_export, "predict": probe_predict, "crf": probe_crf}


def run_probe(kind: str, *args) -> dict:
    cmd = [sys.executable, __file__, "--probe", kind, json.dumps(args)]
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # as dask's nanny starts a worker
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:80] if done.stderr.strip() else f"rc {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def cell(result: dict) -> str:
    if "error" in result:
        return f"failed: {result['error']}"
    peak, added = result["peak_mb"] / 1024, (result["peak_mb"] - result["base_mb"]) / 1024
    return f"{peak:.2f} GB (+{added:.2f}, {result['seconds']:.0f} s)"


def export_cases(args) -> list[tuple[str, int, int]]:
    """(column, max_side, attention_cache_mb) of the export measurements asked for."""
    from labelgen.config import ExportCamsParams

    defaults = ExportCamsParams()
    cases = [] if args.exact_only else [("bounded", defaults.max_side, defaults.attention_cache_mb)]
    cases.append(("exact", UNBOUNDED, defaults.attention_cache_mb))
    if args.no_cache:
        cases.append(("no cache", defaults.max_side, 0))
    if args.all_maps:
        cases.append(("all maps", UNBOUNDED, UNBOUNDED))
    return cases


def predict_cases(args) -> list[tuple[str, int]]:
    from labelgen.config import PredictParams

    return ([] if args.exact_only else [("bounded", PredictParams().max_side)]) + [("exact", UNBOUNDED)]


def export_bounded(size: tuple[int, int], max_side: int) -> bool:
    """Whether max_side changes this W×H image's export (its views or its stored CAMs)."""
    from labelgen.models.cam_inference import fit_factor

    return fit_factor(size[1], size[0], max(EXPORT_SCALES), max_side) < 1 or max(size) > max_side


def predict_bounded(size: tuple[int, int], max_side: int) -> bool:
    from labelgen.config import PredictParams
    from labelgen.stages.predict import pass_fit

    p = PredictParams(scales=PREDICT_SCALES, max_side=max_side)
    return pass_fit(size[1], size[0], p) < 1 or max(size) > max_side


def measure_image(args, model: str, size: tuple[int, int]) -> dict:
    """One row: every case for one model and W×H image. A case without a bound that the bound would
    not change repeats the bounded figure ("= bounded") rather than measuring it again."""
    row = {"model": model, "image": f"{size[0]}x{size[1]}"}
    for name, side, cache in export_cases(args):
        bounded = [c for c in export_cases(args) if c[0] == "bounded"]
        if name == "exact" and bounded and not export_bounded(size, bounded[0][1]):
            row[f"export {name}"] = "= bounded"
        elif (estimate := estimate_export_gb(model, size, side, cache)) > args.limit_gb:
            row[f"export {name}"] = f"not run (est. {estimate:.1f} GB)"
        else:
            row[f"export {name} raw"] = result = run_probe("export", model, size, side, cache)
            row[f"export {name}"] = cell(result)
    if args.predict:
        for name, side in predict_cases(args):
            bounded = [c for c in predict_cases(args) if c[0] == "bounded"]
            if name == "exact" and bounded and not predict_bounded(size, bounded[0][1]):
                row[f"predict {name}"] = "= bounded"
            elif (estimate := estimate_predict_gb(model, size, side)) > args.limit_gb:
                row[f"predict {name}"] = f"not run (est. {estimate:.1f} GB)"
            else:
                row[f"predict {name} raw"] = result = run_probe("predict", model, size, side)
                row[f"predict {name}"] = cell(result)
    return row


def measure(args) -> list[dict]:
    rows = []
    for model in args.models:
        for text in args.sizes:
            rows.append(measure_image(args, model, tuple(int(v) for v in text.split("x"))))
            print_table([{k: v for k, v in rows[-1].items() if not k.endswith(" raw")}])
            sys.stdout.flush()
    if args.crf:
        for text in args.sizes:
            result = run_probe("crf", [int(v) for v in text.split("x")])
            rows.append({"model": "CRF, 3 labels", "image": text, "crf": cell(result), "crf raw": result})
    return rows


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        import torch  # noqa: F401  (before the worker set-up, which sets its thread count)

        from labelgen.pipeline.worker_process import prepare_worker_process

        use_shared_weights()
        prepare_worker_process()
        print(json.dumps(PROBES[sys.argv[2]](*json.loads(sys.argv[3]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="WxH pixels")
    parser.add_argument("--exact-only", action="store_true", help="only the cases without max_side")
    parser.add_argument("--all-maps", action="store_true", help="also export as before: every layer's maps kept")
    parser.add_argument("--no-cache", action="store_true", help="also export with attention_cache_mb=0")
    parser.add_argument("--no-predict", dest="predict", action="store_false")
    parser.add_argument("--crf", action="store_true", help="also the predict CRF over 3 labels at full size")
    parser.add_argument("--limit-gb", type=float, default=6.0, help="skip cases estimated above this")
    args = parser.parse_args()
    use_shared_weights()
    rows = measure(args)
    table = [{k: v for k, v in r.items() if not k.endswith(" raw")} for r in rows]
    print()
    print_table(table)
    extra = {"export_scales": EXPORT_SCALES, "predict_scales": PREDICT_SCALES, "threads": 1, "limit_gb": args.limit_gb}
    path = write_result("inference_memory", rows, extra)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
