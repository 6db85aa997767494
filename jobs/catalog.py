"""The catalog of the ten job types: the single source for validation, price, queue, bucket and pipeline arguments.

Every record is frozen; a deployment tunes steps, guidance or sizes through `Catalog.with_overrides`
(tests shrink sizes the same way), never by editing the records in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class Family(StrEnum):
    SDXL = "sdxl"
    WAN = "wan"


class OutputKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"


class Quality(StrEnum):
    FAST = "fast"
    HIGH = "high"


MB = 1024 * 1024

SDXL_QUEUE = "sdxl_queue"
WAN_QUEUE = "wan_queue"
QUEUES: tuple[str, ...] = (SDXL_QUEUE, WAN_QUEUE)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything that the API and the worker need to know about one job type."""

    job_type: str
    family: Family
    output: OutputKind
    quality: Quality
    num_outputs: int
    width: int
    height: int
    frames: int
    fps: int
    steps: int
    guidance: float
    shift: float
    enhanced: bool
    max_file_bytes: int
    price: int
    reference_seconds: float

    @property
    def description(self) -> str:
        """What the job makes, from the record's own fields (so overrides show)."""
        size = f"{self.width}x{self.height}"
        if self.is_sdxl:
            return f"{self.num_outputs} SDXL images at {size} ({self.quality}: {self.steps} steps)"
        what = f"a {self.frames / self.fps:.0f} s video" if self.output is OutputKind.VIDEO else "an image"
        enhanced = ", prompt enhanced by Qwen" if self.enhanced else ""
        return f"Wan 2.1: {what} at {size} ({self.quality}: {self.steps} steps{enhanced})"

    @property
    def queue(self) -> str:
        return SDXL_QUEUE if self.family is Family.SDXL else WAN_QUEUE

    @property
    def bucket(self) -> str:
        # The reference names each bucket after its job type.
        return self.job_type

    @property
    def is_sdxl(self) -> bool:
        return self.family is Family.SDXL

    @property
    def model_variant(self) -> str:
        return "lustify_sdxl" if self.is_sdxl else "wan_2_1_1_3b"

    @property
    def content_type(self) -> str:
        return "video/mp4" if self.output is OutputKind.VIDEO else "image/png"

    @property
    def file_extension(self) -> str:
        return "mp4" if self.output is OutputKind.VIDEO else "png"

    @property
    def size(self) -> str:
        """The size as existing ourvidz workers read it: `"480*832"` (width*height)."""
        return f"{self.width}*{self.height}"

    @property
    def negative_prompt_supported(self) -> bool:
        return self.is_sdxl


def _sdxl(quality: Quality, steps: int, guidance: float, limit_mb: int, price: int, ref: float) -> JobSpec:
    return JobSpec(
        job_type=f"sdxl_image_{quality}", family=Family.SDXL, output=OutputKind.IMAGE, quality=quality,
        num_outputs=6, width=1024, height=1024, frames=1, fps=0, steps=steps, guidance=guidance, shift=0.0,
        enhanced=False, max_file_bytes=limit_mb * MB, price=price, reference_seconds=ref,
    )


def _wan(job_type: str, output: OutputKind, quality: Quality, enhanced: bool, limit_mb: int, price: int,
         ref: float) -> JobSpec:
    video = output is OutputKind.VIDEO
    high = quality is Quality.HIGH
    frames = (97 if high else 81) if video else 1
    return JobSpec(
        job_type=job_type, family=Family.WAN, output=output, quality=quality, num_outputs=1,
        width=480, height=832, frames=frames, fps=16, steps=50 if high else 25,
        guidance=7.5 if high else 6.5, shift=5.0, enhanced=enhanced, max_file_bytes=limit_mb * MB,
        price=price, reference_seconds=ref,
    )


_IMG, _VID, _F, _H = OutputKind.IMAGE, OutputKind.VIDEO, Quality.FAST, Quality.HIGH

DEFAULT_SPECS: tuple[JobSpec, ...] = (
    _sdxl(_F, 15, 6.0, 5, 1, 29.9),
    _sdxl(_H, 25, 7.5, 10, 2, 42.4),
    _wan("image_fast", _IMG, _F, False, 5, 1, 73.0),
    _wan("image_high", _IMG, _H, False, 10, 2, 90.0),
    _wan("video_fast", _VID, _F, False, 50, 3, 241.4),
    _wan("video_high", _VID, _H, False, 200, 5, 360.0),
    _wan("image7b_fast_enhanced", _IMG, _F, True, 20, 2, 233.5),
    _wan("image7b_high_enhanced", _IMG, _H, True, 20, 3, 104.0),
    _wan("video7b_fast_enhanced", _VID, _F, True, 100, 4, 266.1),
    _wan("video7b_high_enhanced", _VID, _H, True, 100, 6, 361.0),
)

#: The fields of a record that a deployment (or a test) may override.
TUNABLE = frozenset({"width", "height", "frames", "fps", "steps", "guidance", "shift", "price", "num_outputs",
                     "max_file_bytes"})


class Catalog(Mapping[str, JobSpec]):
    """The job types by name, immutable once built."""

    def __init__(self, specs: tuple[JobSpec, ...] = DEFAULT_SPECS) -> None:
        self._specs = {spec.job_type: spec for spec in specs}

    def __getitem__(self, job_type: str) -> JobSpec:
        return self._specs[job_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def job_types(self) -> list[str]:
        return list(self._specs)

    def expected_seconds(self, job_type: str) -> float:
        """How long a job of this type is expected to take, for estimates: the reference's time, except that
        a fast job is never expected to take longer than its high-quality twin. (The reference measured
        `image7b_fast_enhanced` at 233.5 s and `image7b_high_enhanced` at 104 s; the fast one does half
        the steps, so its figure is the outlier.) `reference_seconds` stays what the reference measured,
        for benchmarks to compare against."""
        spec = self._specs[job_type]
        if spec.quality is not Quality.FAST:
            return spec.reference_seconds
        twins = [s.reference_seconds for s in self._specs.values() if s.quality is Quality.HIGH
                 and (s.family, s.output, s.enhanced) == (spec.family, spec.output, spec.enhanced)]
        return min([spec.reference_seconds, *twins])

    def with_overrides(self, overrides: Mapping[str, Mapping[str, Any]]) -> Catalog:
        """A new catalog with some fields replaced, per job type or for all (`"*"`)."""
        specs = []
        for spec in self._specs.values():
            changes = {**overrides.get("*", {}), **overrides.get(spec.job_type, {})}
            unknown = set(changes) - TUNABLE
            if unknown:
                raise ValueError(f"catalog override of {spec.job_type}: not tunable: {sorted(unknown)}")
            specs.append(replace(spec, **changes))
        unknown_types = set(overrides) - set(self._specs) - {"*"}
        if unknown_types:
            raise ValueError(f"catalog override names unknown job types: {sorted(unknown_types)}")
        return Catalog(tuple(specs))


DEFAULT_CATALOG = Catalog()


def queue_of(job_type: str) -> str:
    """The queue a job type travels on; unknown types (another producer's) go by their prefix."""
    spec = DEFAULT_CATALOG.get(job_type)
    if spec is not None:
        return spec.queue
    return SDXL_QUEUE if job_type.startswith("sdxl") else WAN_QUEUE
