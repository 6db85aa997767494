"""Fixtures for the model tests: tiny random-weight checkpoints built once per session, and the loaded models."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.checkpoints import CheckpointPaths, build_all, build_sdxl_single_file
from models.enhancer import PromptEnhancer
from models.sdxl import SdxlGenerator
from models.wan import WanGenerator


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> CheckpointPaths:
    return build_all(tmp_path_factory.mktemp("checkpoints"), "tiny")


@pytest.fixture(scope="session")
def sdxl_single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sdxl_single_file(tmp_path_factory.mktemp("single-file") / "sdxl-tiny.safetensors", "tiny")


@pytest.fixture(scope="session")
def sdxl(tiny_checkpoints: CheckpointPaths) -> SdxlGenerator:
    return SdxlGenerator.load(tiny_checkpoints.sdxl)


@pytest.fixture(scope="session")
def wan(tiny_checkpoints: CheckpointPaths) -> WanGenerator:
    return WanGenerator.load(tiny_checkpoints.wan)


@pytest.fixture(scope="session")
def enhancer(tiny_checkpoints: CheckpointPaths) -> PromptEnhancer:
    return PromptEnhancer.load(tiny_checkpoints.enhancer)
