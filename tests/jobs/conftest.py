"""Fixtures shared by the storage tests: the object paths that every backend must refuse."""

from __future__ import annotations

import pytest

BAD_PATHS = [
    "",
    "/abs/olute.png",
    "../escape.png",
    "user/../../escape.png",
    "user/./file.png",
    "user//file.png",
    "user/",
    "user\\file.png",
    "user/fi\x00le.png",
    "user/line\nbreak.png",
    "user/" + "x" * 1020,
]


@pytest.fixture(params=BAD_PATHS, ids=repr)
def bad_path(request: pytest.FixtureRequest) -> str:
    path: str = request.param
    return path
