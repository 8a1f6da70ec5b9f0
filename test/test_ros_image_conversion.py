"""sensor_msgs/Image and CompressedImage conversion, for every supported encoding and layout."""
import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 sensor_msgs is not importable; run: bash scripts/test.sh")
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from anymo_ros.ros.image_conversion import (  # noqa: E402
    ImageConversionError, array_to_image, compressed_to_rgb, image_to_array, image_to_rgb)

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (5, 7, 1), dtype=np.uint8)
GREY = RNG.integers(0, 256, (5, 7), dtype=np.uint8)

# encoding -> (pixels as they are laid out in the message, the RGB image expected back)
ENCODED = {
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[:, :, ::-1], RGB),
    "rgba8": (np.concatenate([RGB, ALPHA], axis=2), RGB),
    "bgra8": (np.concatenate([RGB[:, :, ::-1], ALPHA], axis=2), RGB),
    "mono8": (GREY, np.repeat(GREY[:, :, None], 3, axis=2)),
}


def raw_image(pixels: np.ndarray, encoding: str, padding: int = 0, bigendian: bool = False) -> Image:
    """An Image with ``padding`` junk bytes after each row; multi-byte pixels in the stated order."""
    height, width = pixels.shape[:2]
    ordered = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = ordered.reshape(height, -1).view(np.uint8)
    junk = np.full((height, padding), 0xAB, np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    return Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                 step=rows.shape[1] + padding, data=data)


@pytest.mark.parametrize("encoding", list(ENCODED))
@pytest.mark.parametrize("padding", [0, 3])
@pytest.mark.parametrize("bigendian", [False, True])
def test_each_input_encoding_becomes_rgb(encoding, padding, bigendian):
    # 8-bit channels have no byte order, so the flag must not change anything.
    layout, expected = ENCODED[encoding]
    rgb = image_to_rgb(raw_image(layout, encoding, padding, bigendian))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("padding", [0, 2])
def test_mono16_honours_byte_order_and_step(bigendian, padding):
    labels = RNG.integers(0, 65536, (4, 6), dtype=np.uint16)
    decoded = image_to_array(raw_image(labels, "mono16", padding, bigendian))
    assert decoded.dtype == np.uint16 and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, labels)


@pytest.mark.parametrize("encoding, pixels", [("mono16", np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000),
                                              ("rgb8", RGB)])
def test_array_to_image_round_trip(encoding, pixels):
    header = Header(frame_id="camera")
    msg = array_to_image(pixels, encoding, header)
    assert msg.header.frame_id == "camera"
    assert (msg.height, msg.width, msg.encoding) == (pixels.shape[0], pixels.shape[1], encoding)
    assert msg.step * msg.height == len(msg.data)
    np.testing.assert_array_equal(image_to_array(msg), pixels)


def test_array_to_image_rejects_mismatched_pixels():
    with pytest.raises(ValueError, match="mono16"):
        array_to_image(GREY, "mono16", Header())


@pytest.mark.parametrize("msg, kind, words", [
    (Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)), "unsupported_encoding", "16UC1"),
    (Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)), "unsupported_encoding", "rgb8"),
    (Image(height=0, width=4, encoding="rgb8", step=12, data=b""), "empty", "empty"),
    (Image(height=3, width=4, encoding="rgb8", step=12, data=bytes(30)), "truncated", "30 bytes"),
    (Image(height=3, width=4, encoding="rgb8", step=8, data=bytes(36)), "bad_step", "step 8"),
])
def test_bad_images_are_rejected_with_a_reason(msg, kind, words):
    with pytest.raises(ImageConversionError, match=words) as caught:
        image_to_rgb(msg)
    assert caught.value.kind == kind


def test_mono16_is_not_a_camera_input():
    with pytest.raises(ImageConversionError) as caught:
        image_to_rgb(raw_image(np.zeros((2, 2), np.uint16), "mono16"))
    assert caught.value.kind == "unsupported_encoding"


@pytest.mark.parametrize("extension, tolerance", [(".png", 0), (".jpg", 40)])
def test_compressed_images_decode_to_rgb(extension, tolerance):
    smooth = cv2.GaussianBlur(cv2.resize(RGB, (64, 48)), (0, 0), 2)
    ok, encoded = cv2.imencode(extension, cv2.cvtColor(smooth, cv2.COLOR_RGB2BGR))
    assert ok
    rgb = compressed_to_rgb(CompressedImage(format=extension[1:], data=encoded.tobytes()))
    assert rgb.shape == smooth.shape
    assert np.abs(rgb.astype(int) - smooth).max() <= tolerance


@pytest.mark.parametrize("data, kind", [(b"", "empty"), (b"not an image at all", "decode_failed")])
def test_bad_compressed_images_are_rejected(data, kind):
    with pytest.raises(ImageConversionError) as caught:
        compressed_to_rgb(CompressedImage(format="jpeg", data=data))
    assert caught.value.kind == kind
