"""The rgb8 debug overlay: each object's mask tinted in a colour fixed by its id, outlined."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

_ALPHA = 0.5


def id_colour(object_id: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per id (golden-ratio hue steps)."""
    hue = (object_id * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(red * 255), int(green * 255), int(blue * 255)


def render_overlay(image_rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``image_rgb`` (H, W, 3) uint8 with the objects of ``labels`` (H, W) uint16 drawn over it:
    tinted mask, outline, and the id at the mask's centroid."""
    overlay = image_rgb.copy()
    for object_id in np.unique(labels[labels > 0]).tolist():
        mask = labels == object_id
        colour = id_colour(object_id)
        overlay[mask] = (overlay[mask] * (1 - _ALPHA) + np.array(colour, np.float32) * _ALPHA).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(overlay, contours, -1, colour, 2)
        ys, xs = np.nonzero(mask)
        cv2.putText(overlay, str(object_id), (int(xs.mean()), int(ys.mean())), cv2.FONT_HERSHEY_SIMPLEX,
                    0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return overlay
