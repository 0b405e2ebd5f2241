"""Inputs and outputs of inference: an image, a folder of images, or a video (PyAV).

kind = input_kind(path)                    # 'image' | 'folder' | 'video'
for frame in read_video(path).frames: ...  # PIL RGB images, decoded one at a time
with VideoWriter(out, fps, (w, h)) as vw: vw.write(pil_image)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, List, Optional, Tuple

import PIL.Image

__all__ = [
    "IMAGE_EXTS",
    "VIDEO_EXTS",
    "input_kind",
    "list_images",
    "Video",
    "read_video",
    "VideoWriter",
]

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("video input/output needs PyAV: pip install av") from e
    return av


def input_kind(path: str) -> str:
    """'folder', 'image' or 'video' by the path (and extension); an error otherwise."""
    if os.path.isdir(path):
        return "folder"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"input not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise ValueError(
        f"{path}: unknown input type {ext!r} (images: {', '.join(IMAGE_EXTS)}; "
        f"videos: {', '.join(VIDEO_EXTS)})"
    )


def list_images(folder: str) -> List[str]:
    """The image files directly in ``folder``, sorted by name."""
    names = sorted(
        n
        for n in os.listdir(folder)
        if n.lower().endswith(IMAGE_EXTS) and os.path.isfile(os.path.join(folder, n))
    )
    if not names:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return [os.path.join(folder, n) for n in names]


@dataclass
class Video:
    """A video being decoded: ``frames`` yields PIL RGB images; ``num_frames`` may be 0 when the
    container does not say; ``fps`` is a Fraction."""

    path: str
    fps: Fraction
    size: Tuple[int, int]  # (width, height)
    num_frames: int
    frames: Iterator[PIL.Image.Image]


def read_video(path: str) -> Video:
    av = _av()
    try:
        container = av.open(path)
        stream = container.streams.video[0]
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot read a video stream from {path}: {e}") from e
    fps = stream.average_rate or stream.guessed_rate or Fraction(25)

    def frames() -> Iterator[PIL.Image.Image]:
        try:
            for frame in container.decode(stream):
                yield frame.to_image()
        finally:
            container.close()

    return Video(
        path, Fraction(fps), (stream.width, stream.height), int(stream.frames or 0), frames()
    )


class VideoWriter:
    """Encode PIL images to a video file (H.264 in yuv420p, MPEG-4 Part 2 where the FFmpeg
    build has no H.264 encoder). yuv420p needs even sizes: an odd width or height is scaled to
    the even size below."""

    def __init__(self, path: str, fps, size: Tuple[int, int], codec: Optional[str] = None):
        av = _av()
        self.container = av.open(path, mode="w")
        rate = Fraction(fps).limit_denominator(1001)
        for name in [codec] if codec else ["libx264", "h264", "mpeg4"]:
            try:
                self.stream = self.container.add_stream(name, rate=rate)
                break
            except (av.error.FFmpegError, ValueError):
                continue
        else:
            self.container.close()
            tried = codec or "libx264, h264, mpeg4"
            raise RuntimeError(f"{path}: no video encoder available (tried {tried})")
        w, h = size
        self.stream.width, self.stream.height = w - w % 2, h - h % 2
        self.stream.pix_fmt = "yuv420p"
        self.path = path
        self._av = av

    def write(self, image: PIL.Image.Image) -> None:
        frame = self._av.VideoFrame.from_image(image.convert("RGB"))
        frame = frame.reformat(width=self.stream.width, height=self.stream.height, format="yuv420p")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.container is not None:
            for packet in self.stream.encode():  # flush
                self.container.mux(packet)
            self.container.close()
            self.container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
