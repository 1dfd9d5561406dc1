"""Class-index masks <-> Label Studio brush results.

Label Studio stores a brush region as one result per label: `{"type": "brushlabels", "value":
{"format": "rle", "rle": [...], "brushlabels": [name]}, "original_width", "original_height", ...}`,
where `rle` is thi.ng's rle-pack of the region's H×W×4 RGBA bytes (the alpha byte, 255 where
painted, is what counts). The codec is label-studio-converter's (`label_studio_converter.brush`:
`mask2rle` encodes an H×W uint8 layer, `decode_rle` gives back the flat RGBA bytes), imported
lazily: it pulls pandas in, which nothing else of labelgen needs at import time.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from labelgen.errors import DataError

BRUSH_TYPE = "brushlabels"


def mask_to_results(mask: np.ndarray, classes: tuple[str, ...], from_name: str, to_name: str) -> list[dict[str, Any]]:
    """The brush results of an H×W uint8 class-index mask (0 background, 1..C = `classes[1:]`, 255
    ignore): one result per foreground label present, painted at alpha 255. Background and ignore
    are left unpainted (a brush cannot say "ignore")."""
    from label_studio_converter.brush import mask2rle

    height, width = mask.shape
    results = []
    for label in np.unique(mask):
        if label == 0 or label >= len(classes):
            continue
        layer = np.where(mask == label, 255, 0).astype(np.uint8)
        results.append(
            {
                "type": BRUSH_TYPE,
                "from_name": from_name,
                "to_name": to_name,
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {"format": "rle", "rle": [int(v) for v in mask2rle(layer)], "brushlabels": [classes[label]]},
            }
        )
    return results


def results_to_mask(
    results: list[dict[str, Any]], classes: tuple[str, ...], size: tuple[int, int], where: str
) -> np.ndarray:
    """The H×W uint8 class-index mask (`size` = (H, W), the image's in labelgen's frame) of an
    annotation's brush results: later results painted over earlier ones, unpainted pixels
    background (0); an annotation without brush results (everything erased) is all background.
    Raises `DataError` naming `where` for a label that is not one of `classes` or a result whose
    size is not the image's."""
    from label_studio_converter.brush import decode_rle

    label_of = {name: k for k, name in enumerate(classes)}
    mask = np.zeros(size, np.uint8)
    for result in results:
        if result.get("type", "").lower() != BRUSH_TYPE:
            continue
        value = result.get("value", {})
        rle = value.get("rle", result.get("rle"))  # older exports keep it beside `value`
        names = value.get(BRUSH_TYPE) or result.get(BRUSH_TYPE) or []
        if rle is None or not names:
            continue
        unknown = [n for n in names if n not in label_of]
        if unknown:
            raise DataError(
                f"{where}: brush label {unknown[0]!r} is not a class of this run ({', '.join(classes[1:])}); "
                "label regions with the run's class names"
            )
        this = (int(result["original_height"]), int(result["original_width"]))
        if this != tuple(size):
            raise DataError(
                f"{where}: a brush result of {this[1]}×{this[0]} pixels on an image labelgen reads as "
                f"{size[1]}×{size[0]}; annotate the image labelgen sent (labelgen review push)"
            )
        alpha = decode_rle(rle).reshape(this[0], this[1], 4)[:, :, 3]
        mask[alpha > 0] = label_of[names[-1]]
    return mask
