"""The checkpoint builder: real folder layouts, idempotent and deterministic builds, real parameter counts."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from safetensors import safe_open
from transformers import (
    AutoTokenizer,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Qwen2ForCausalLM,
    UMT5EncoderModel,
)

from models import checkpoints
from models.checkpoints import (
    MARKER,
    CheckpointPaths,
    build_all,
    build_enhancer,
    build_sdxl,
    build_sdxl_single_file,
)

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def _weight_digests(folder: Path) -> dict[str, str]:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*.safetensors"))}


def test_sdxl_has_the_layout_of_stable_diffusion_xl_base(tiny_checkpoints: CheckpointPaths) -> None:
    files = _files(tiny_checkpoints.sdxl)
    expected = {"model_index.json", "scheduler/scheduler_config.json", f"unet/{WEIGHTS}", "unet/config.json",
                f"vae/{WEIGHTS}", "vae/config.json", "text_encoder/model.safetensors", "text_encoder/config.json",
                "text_encoder_2/model.safetensors", "text_encoder_2/config.json", MARKER}
    for tokenizer in ("tokenizer", "tokenizer_2"):
        expected |= {f"{tokenizer}/{name}" for name in ("tokenizer_config.json", "vocab.json", "merges.txt")}
    assert expected <= files
    index = json.loads((tiny_checkpoints.sdxl / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]


def test_sdxl_tokenizers_truncate_to_77_and_tokenizer_2_pads_with_bang(tiny_checkpoints: CheckpointPaths) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(tiny_checkpoints.sdxl / "tokenizer", local_files_only=True)
    tokenizer_2 = CLIPTokenizer.from_pretrained(tiny_checkpoints.sdxl / "tokenizer_2", local_files_only=True)
    long_prompt = "a red cat walking on a beach at sunset " * 30
    ids = tokenizer(long_prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
    assert tokenizer.model_max_length == 77
    assert len(ids.input_ids) == 77
    assert tokenizer.tokenize("a cat")[-1] == "cat</w>"  # whole words, not only bytes
    assert tokenizer_2.pad_token == "!"


def test_wan_has_the_layout_of_wan_2_1_diffusers(tiny_checkpoints: CheckpointPaths) -> None:
    files = _files(tiny_checkpoints.wan)
    expected = {"model_index.json", "scheduler/scheduler_config.json", f"transformer/{WEIGHTS}",
                "transformer/config.json", f"vae/{WEIGHTS}", "vae/config.json", "text_encoder/model.safetensors",
                "text_encoder/config.json", "tokenizer/tokenizer_config.json", "tokenizer/tokenizer.json"}
    assert expected <= files
    index = json.loads((tiny_checkpoints.wan / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    scheduler = json.loads((tiny_checkpoints.wan / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "UniPCMultistepScheduler"
    assert scheduler["prediction_type"] == "flow_prediction"
    assert scheduler["use_flow_sigmas"] is True


def test_enhancer_has_the_layout_of_qwen_instruct(tiny_checkpoints: CheckpointPaths) -> None:
    folder = tiny_checkpoints.enhancer
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "vocab.json", "merges.txt"} <= _files(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                         add_generation_prompt=True)
    assert isinstance(chat, str)
    assert chat.startswith("<|im_start|>system\n")
    assert chat.endswith("<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n")
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]


def test_builds_are_deterministic(tiny_checkpoints: CheckpointPaths, tmp_path: Path) -> None:
    again = build_all(tmp_path, "tiny")
    for first, second in zip((tiny_checkpoints.sdxl, tiny_checkpoints.wan, tiny_checkpoints.enhancer),
                             (again.sdxl, again.wan, again.enhancer), strict=True):
        digests = _weight_digests(first)
        assert digests
        assert digests == _weight_digests(second)


def test_a_complete_folder_is_skipped(tmp_path: Path) -> None:
    out = build_enhancer(tmp_path / "qwen", "tiny")
    before = (out / "model.safetensors").stat().st_mtime_ns
    messages: list[str] = []
    build_all(tmp_path, "tiny", progress=messages.append)
    assert (out / "model.safetensors").stat().st_mtime_ns == before
    assert any("Qwen" in message and "complete" in message for message in messages)
    assert (out / MARKER).read_text() == "tiny"


def test_an_unfinished_folder_is_rebuilt(tmp_path: Path) -> None:
    out = tmp_path / "sdxl"
    (out / "unet").mkdir(parents=True)
    (out / "unet" / "half-written").write_text("")
    build_sdxl(out, "tiny")
    assert not (out / "unet" / "half-written").exists()
    assert (out / MARKER).read_text() == "tiny"
    assert [path.name for path in tmp_path.iterdir()] == ["sdxl"]  # no temp folder left behind


def test_unknown_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="huge"):
        build_sdxl(tmp_path / "sdxl", "huge")  # type: ignore[arg-type]


def test_a_complete_single_file_is_skipped(sdxl_single_file: Path) -> None:
    before = sdxl_single_file.stat().st_mtime_ns
    assert build_sdxl_single_file(sdxl_single_file, "tiny") == sdxl_single_file
    assert sdxl_single_file.stat().st_mtime_ns == before


def test_built_files_are_readable_by_other_users(tiny_checkpoints: CheckpointPaths) -> None:
    for path in tiny_checkpoints.enhancer.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644)


def test_single_file_has_the_original_sdxl_key_layout(sdxl_single_file: Path) -> None:
    with safe_open(sdxl_single_file, framework="pt") as checkpoint:
        keys = set(checkpoint.keys())
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
                "model.diffusion_model.label_emb.0.0.weight", "first_stage_model.decoder.mid.attn_1.q.weight",
                "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight",
                "conditioner.embedders.1.model.positional_embedding",
                "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"):
        assert key in keys
    prefixes = ("model.diffusion_model.", "first_stage_model.", "conditioner.embedders.0.transformer.",
                "conditioner.embedders.1.model.")
    assert all(key.startswith(prefixes) for key in keys)


def _parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_full_configs_have_the_real_parameter_counts() -> None:
    # On the meta device: the shapes without the memory, so the 7.6 B-parameter Qwen costs nothing.
    text_config, text_config_2 = checkpoints.sdxl_text_encoder_configs("full")
    with torch.device("meta"):
        counts = {
            "unet": _parameters(UNet2DConditionModel(**checkpoints.sdxl_unet_config("full"))),
            "vae": _parameters(AutoencoderKL(**checkpoints.sdxl_vae_config("full"))),
            "clip_l": _parameters(CLIPTextModel(text_config)),
            "clip_big_g": _parameters(CLIPTextModelWithProjection(text_config_2)),
            "wan": _parameters(WanTransformer3DModel(**checkpoints.wan_transformer_config("full"))),
            "wan_vae": _parameters(AutoencoderKLWan(**checkpoints.wan_vae_config("full"))),
            "umt5_xxl": _parameters(UMT5EncoderModel(checkpoints.umt5_config("full"))),
            "qwen": _parameters(Qwen2ForCausalLM(checkpoints.qwen_config("full"))),
        }
    # The counts of stabilityai/stable-diffusion-xl-base-1.0 and Qwen/Qwen2.5-7B-Instruct, to the parameter.
    assert counts["unet"] == 2_567_463_684
    assert counts["vae"] == 83_653_863
    assert counts["clip_l"] == 123_060_480
    assert counts["clip_big_g"] == 694_659_840
    assert counts["qwen"] == 7_615_616_512
    assert 1.40e9 < counts["wan"] < 1.43e9  # "1.3B"
    assert 1.2e8 < counts["wan_vae"] < 1.3e8
    assert 5.6e9 < counts["umt5_xxl"] < 5.8e9
