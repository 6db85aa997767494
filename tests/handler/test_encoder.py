"""The encoder: lossless PNGs; H.264 MP4s of the right shape and rate with moov first; the size limit."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import replace

import av
import numpy as np
import pytest
from PIL import Image

from handler.encoder import Encoder, FileTooLarge, check_size, encode_mp4, encode_png
from jobs.catalog import DEFAULT_CATALOG, MB


def _gradient_frames(count: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradients: the kind of content crf 18 keeps close to the original."""
    y, x = np.mgrid[0:height, 0:width]
    frames = [
        np.stack([(x * 255 // width + 4 * t) % 256, y * 255 // height, np.full_like(x, 128 + t)], axis=-1)
        for t in range(count)
    ]
    return np.asarray(frames, dtype=np.uint8)


def _top_level_boxes(data: bytes) -> Iterator[str]:
    """The types of an MP4's top-level boxes (ISO/IEC 14496-12 §4.2), in file order."""
    offset = 0
    while offset + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        if size == 1:  # a 64-bit size follows the type
            size = struct.unpack(">Q", data[offset + 8 : offset + 16])[0]
        elif size == 0:  # the box runs to the end of the file
            size = len(data) - offset
        yield kind.decode("latin-1")
        offset += size


@pytest.fixture
def encoder() -> Iterator[Encoder]:
    with Encoder(max_workers=2) as encoder:
        yield encoder


@pytest.mark.parametrize("shape", [(64, 48, 3), (64, 48), (32, 32, 4)])
def test_png_decodes_to_the_same_pixels(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)

    data = encode_png(image)

    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(decoded), image)


def test_png_refuses_what_is_not_a_uint8_image() -> None:
    with pytest.raises(ValueError, match="uint8, got float32"):
        encode_png(np.zeros((8, 8, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(2, 8, 8, 3\)"):
        encode_png(np.zeros((2, 8, 8, 3), dtype=np.uint8))


def test_mp4_decodes_to_the_frames_size_rate_and_format() -> None:
    frames = _gradient_frames(count=17, height=64, width=48)

    data = encode_mp4(frames, fps=16)

    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.width, stream.height) == (48, 64)
        assert stream.average_rate == 16
        assert stream.codec_context.pix_fmt == "yuv420p"
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(decoded) == 17
    # Lossy but close: crf 18 on smooth content is within a few levels on average.
    assert np.abs(np.asarray(decoded, dtype=np.int16) - frames).mean() < 4


def test_mp4_is_faststart_with_moov_before_mdat() -> None:
    data = encode_mp4(_gradient_frames(count=8, height=32, width=32), fps=16)

    boxes = list(_top_level_boxes(data))

    assert boxes[0] == "ftyp"
    assert boxes.index("moov") < boxes.index("mdat")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((4, 63, 48, 3), "height must be even for yuv420p, got 63"),
        ((4, 64, 47, 3), "width must be even for yuv420p, got 47"),
    ],
)
def test_mp4_refuses_odd_sizes(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_mp4(np.zeros(shape, dtype=np.uint8), fps=16)


def test_mp4_refuses_bad_frames_and_fps() -> None:
    with pytest.raises(ValueError, match="fps must be at least 1, got 0"):
        encode_mp4(np.zeros((2, 8, 8, 3), dtype=np.uint8), fps=0)
    with pytest.raises(ValueError, match="frames must be uint8, got float64"):
        encode_mp4(np.zeros((2, 8, 8, 3)), fps=16)
    with pytest.raises(ValueError, match=r"got shape \(0, 8, 8, 3\)"):
        encode_mp4(np.zeros((0, 8, 8, 3), dtype=np.uint8), fps=16)


def test_check_size_names_the_file_its_size_and_the_limit() -> None:
    with pytest.raises(FileTooLarge) as failure:
        check_size(b"\0" * int(6.2 * MB), 5 * MB, "image 3")

    assert str(failure.value) == "image 3 is 6.2 MB, over the bucket's 5 MB limit"
    assert (failure.value.name, failure.value.size, failure.value.limit) == ("image 3", int(6.2 * MB), 5 * MB)


def test_check_size_never_says_a_file_over_the_limit_is_the_limit() -> None:
    with pytest.raises(FileTooLarge, match=r"^video 1 is 5\.02 MB, over the bucket's 5 MB limit$"):
        check_size(b"\0" * int(5.02 * MB), 5 * MB, "video 1")
    with pytest.raises(FileTooLarge, match=r"^video 1 is 5\.0000\d+ MB, over the bucket's 5 MB limit$"):
        check_size(b"\0" * (5 * MB + 1), 5 * MB, "video 1")


def test_check_size_accepts_a_file_at_the_limit() -> None:
    check_size(b"\0" * 1024, 1024, "image 1")


async def test_encoder_encodes_a_job_of_images_in_order(encoder: Encoder) -> None:
    spec = DEFAULT_CATALOG["sdxl_image_fast"]
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(spec.num_outputs)]

    files = await encoder.encode(spec, images)

    assert len(files) == 6
    for data, image in zip(files, images, strict=True):
        with Image.open(io.BytesIO(data)) as decoded:
            np.testing.assert_array_equal(np.asarray(decoded), image)


async def test_encoder_encodes_a_video_job_at_the_spec_fps(encoder: Encoder) -> None:
    spec = replace(DEFAULT_CATALOG["video_fast"], fps=8)

    [data] = await encoder.encode(spec, [_gradient_frames(count=5, height=32, width=32)])

    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.streams.video[0].average_rate == 8


async def test_encoder_fails_a_job_whose_file_is_over_the_bucket_limit(encoder: Encoder) -> None:
    spec = replace(DEFAULT_CATALOG["image_fast"], max_file_bytes=1000)
    noise = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)

    with pytest.raises(FileTooLarge, match=r"^image 1 is 0\.0\d+ MB, over the bucket's 0\.000954 MB limit$"):
        await encoder.encode(spec, [noise])
