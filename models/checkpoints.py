"""Builds random-weight checkpoints of SDXL, Wan 2.1 T2V 1.3B and the Qwen prompt enhancer, in the real folder layouts.

`tiny` runs in seconds on a CPU (the embedded deployment, the tests); `full` has the real architectures, for GPU
benchmarks where no weights can be downloaded. Every folder loads with `from_pretrained(path, local_files_only=True)`.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, get_args

import torch

# From their modules, not the `diffusers` facade: type checkers resolve the facade to placeholder classes.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.autoencoders.autoencoder_kl_wan import AutoencoderKLWan
from diffusers.models.transformers.transformer_wan import WanTransformer3DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import StableDiffusionXLPipeline
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    GenerationConfig,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from models.build_marker import MARKER, Size, is_complete
from models.device import quiet_progress_bars

logger = logging.getLogger(__name__)

SIZES: tuple[Size, ...] = get_args(Size)

# One seed per component: each model's weights depend only on its own seed and config, so two builds are equal.
_SEEDS = {"unet": 1, "vae": 2, "text_encoder": 3, "text_encoder_2": 4, "transformer": 5, "wan_vae": 6,
          "umt5": 7, "qwen": 8}

ModelT = TypeVar("ModelT", bound=torch.nn.Module)


@dataclass(frozen=True, slots=True)
class CheckpointPaths:
    """Where `build_all` put each model."""

    sdxl: Path
    wan: Path
    enhancer: Path


# --- public entry points ---------------------------------------------------------------------------------------


def build_all(root: Path, size: Size, progress: Callable[[str], None] | None = None) -> CheckpointPaths:
    """Build the three models under `root` (root/sdxl, root/wan, root/qwen), skipping those already complete."""
    paths = CheckpointPaths(sdxl=root / "sdxl", wan=root / "wan", enhancer=root / "qwen")
    for name, build, out in (("SDXL", build_sdxl, paths.sdxl), ("Wan 2.1", build_wan, paths.wan),
                             ("Qwen enhancer", build_enhancer, paths.enhancer)):
        if progress is not None:
            progress(f"{name} ({size}): {'complete' if is_complete(out, size) else 'building'} in {out}")
        build(out, size)
    return paths


def build_sdxl(out: Path, size: Size) -> Path:
    """An SDXL base pipeline folder (unet, vae, two CLIP text encoders and tokenizers, Euler scheduler)."""
    return _build_once(out, size, _write_sdxl)


def build_wan(out: Path, size: Size) -> Path:
    """A Wan 2.1 T2V folder in the layout of Wan-AI/Wan2.1-T2V-1.3B-Diffusers."""
    return _build_once(out, size, _write_wan)


def build_enhancer(out: Path, size: Size) -> Path:
    """A Qwen2 causal LM folder in the layout of Qwen/Qwen2.5-7B-Instruct (tokenizer with chat template)."""
    return _build_once(out, size, _write_enhancer)


def build_sdxl_single_file(out_file: Path, size: Size) -> Path:
    """The same SDXL weights as `build_sdxl`, as one `.safetensors` file in the original (LDM) key layout.

    That is how single-file checkpoints such as LUSTIFY ship; it loads with
    `StableDiffusionXLPipeline.from_single_file(out_file, config=<a build_sdxl folder>, local_files_only=True)`.
    Skipped when `out_file` already holds this size (the file is renamed into place only once written).
    """
    _check_size(size)
    if out_file.is_file() and _single_file_size(out_file) == size:
        logger.info("checkpoint %s (%s) is complete, not rebuilding", out_file, size)
        return out_file
    out_file.parent.mkdir(parents=True, exist_ok=True)
    components = _sdxl_components(size)
    state = sdxl_ldm_state_dict(components["unet"], components["vae"], components["text_encoder"],
                                components["text_encoder_2"])
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_file.name}.", dir=out_file.parent)
    os.close(fd)
    try:
        save_file(state, tmp_name, metadata={"format": "pt", "ourvidz_size": size})
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out_file)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_file


def _single_file_size(path: Path) -> str | None:
    with safe_open(path, framework="pt") as checkpoint:
        return (checkpoint.metadata() or {}).get("ourvidz_size")


# --- architectures ---------------------------------------------------------------------------------------------


def sdxl_unet_config(size: Size) -> dict[str, Any]:
    """SDXL base UNet; tiny keeps cross-attention at the lowest resolution only (attention over 64x64 dominates)."""
    if size == "full":
        return {
            "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [320, 640, 1280], "attention_head_dim": [5, 10, 20],
            "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048,
            "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
        }
    return {
        "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "block_out_channels": [16, 32, 32], "attention_head_dim": [2, 4, 4],
        "transformer_layers_per_block": [1, 1, 1], "cross_attention_dim": 32 + 48,
        "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
        # 6 size/crop ids x 8 + the pooled projection of text_encoder_2 (48), as SDXL's 6 x 256 + 1280.
        "projection_class_embeddings_input_dim": 6 * 8 + 48, "norm_num_groups": 8,
    }


def sdxl_vae_config(size: Size) -> dict[str, Any]:
    """SDXL's VAE (4 levels, so the latent is 1/8 of the image in both sizes)."""
    channels = [128, 256, 512, 512] if size == "full" else [8, 16, 16, 16]
    return {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 1024,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": channels, "layers_per_block": 2 if size == "full" else 1,
        "norm_num_groups": 32 if size == "full" else 8, "scaling_factor": 0.13025, "force_upcast": True,
    }


def sdxl_text_encoder_configs(size: Size) -> tuple[CLIPTextConfig, CLIPTextConfig]:
    """CLIP ViT-L/14 (text_encoder) and OpenCLIP ViT-bigG/14 (text_encoder_2) text towers."""
    tokenizer = _clip_tokenizer(pad_token="<|endoftext|>")
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id, "max_position_embeddings": 77}
    if size == "full":
        return (
            CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768, **ids),
            CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                           num_attention_heads=20, hidden_act="gelu", projection_dim=1280, **ids),
        )
    # The two widths must differ: the single-file loader tells the two towers apart by their width.
    return (
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, hidden_act="quick_gelu", projection_dim=32, **ids),
        CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, hidden_act="gelu", projection_dim=48, **ids),
    )


def wan_transformer_config(size: Size) -> dict[str, Any]:
    """Wan 2.1 T2V 1.3B DiT; tiny: one layer, one head of 12 (attention over 32k tokens dominates at 81 frames)."""
    common = {"patch_size": [1, 2, 2], "in_channels": 16, "out_channels": 16, "freq_dim": 256,
              "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6,
              # must cover the largest side of the patched latent grid (832 / 8 / 2 = 52)
              "rope_max_seq_len": 1024}
    if size == "full":
        return {**common, "num_attention_heads": 12, "attention_head_dim": 128, "text_dim": 4096,
                "ffn_dim": 8960, "num_layers": 30}
    return {**common, "num_attention_heads": 1, "attention_head_dim": 12, "text_dim": 32, "ffn_dim": 32,
            "num_layers": 1}


def wan_vae_config(size: Size) -> dict[str, Any]:
    """Wan 2.1's causal 3D VAE (z_dim 16, 8x spatial, 4x temporal in both sizes).

    Tiny: base_dim 3 and no extra residual blocks. The decode of 81 frames at 480x832 is then ~15 s on two
    CPU cores; it is spent in the full-resolution conv3d and RMS norms, whose count num_res_blocks sets.
    """
    if size == "full":
        return {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                "temperal_downsample": [False, True, True], "dropout": 0.0}
    return {"base_dim": 3, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 0, "attn_scales": [],
            "temperal_downsample": [False, True, True], "dropout": 0.0}


def umt5_config(size: Size) -> UMT5Config:
    """The UMT5-XXL encoder that Wan 2.1 conditions on (4096 wide, 24 layers)."""
    if size == "full":
        return UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                          feed_forward_proj="gated-gelu", dropout_rate=0.1, layer_norm_epsilon=1e-6)
    return UMT5Config(vocab_size=len(_t5_tokenizer()), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6)


def qwen_config(size: Size) -> Qwen2Config:
    """Qwen2.5-7B-Instruct; tiny is 2 layers of width 64."""
    tokenizer = _qwen_tokenizer()
    ids = {"bos_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
           "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0}, "rms_norm_eps": 1e-6,
           "max_position_embeddings": 32768, "tie_word_embeddings": False, "use_sliding_window": False}
    if size == "full":
        return Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                           num_attention_heads=28, num_key_value_heads=4, max_window_layers=28, **ids)
    return Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_window_layers=2, **ids)


# --- tokenizers: small vocabularies with the real tokenizers' algorithms and special tokens -------------------

# Enough whole words that prompts tokenize into words, not only bytes; any other text still tokenizes.
_WORDS = (
    "a", "an", "the", "of", "and", "in", "on", "with", "at", "to", "is", "by", "from", "under", "over",
    "through", "into", "while", "as", "her", "his", "their", "cat", "dog", "woman", "man", "girl", "boy",
    "people", "city", "night", "day", "light", "sun", "sky", "sea", "forest", "mountain", "street", "river",
    "portrait", "photo", "cinematic", "camera", "slow", "motion", "walking", "running", "dancing", "flying",
    "standing", "sitting", "red", "blue", "green", "golden", "dark", "bright", "soft", "warm", "cold",
    "detailed", "realistic", "high", "quality", "close", "up", "shot", "wide", "style", "video", "image",
    "scene", "background", "foreground", "water", "rain", "snow", "fire", "smile", "hair", "eyes", "face",
    "dress", "car", "road", "house", "room", "window", "flower", "tree", "bird", "horse", "beach", "ocean",
    "wave", "cloud", "moon", "star", "sunset", "morning", "blurry", "low", "worst", "ugly", "deformed", "bad",
    "hands", "text", "watermark", "static", "overexposed", "subtitles",
)

# BPE merges as (left, right) pairs: what the tokenizers library takes, whatever transformers' hints say.
Merges = list[tuple[str, str]]

_CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: Qwen2.5-Instruct's chat format (system, user, assistant turns), without the tool-calling branches.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _bpe_vocab(alphabet: list[str], words: Iterable[list[str]], specials: Iterable[str]
               ) -> tuple[dict[str, int], Merges]:
    """A byte-level BPE: the alphabet, then merges that make each word one token, then the special tokens.

    Each word is first split by the merges learnt so far, then its leftmost pairs are merged; the new merges
    rank last, so they never change how an earlier word splits.
    """
    vocab = {token: index for index, token in enumerate(alphabet)}
    ranks: dict[tuple[str, str], int] = {}
    for parts in words:
        tokens = _apply_merges(parts, ranks)
        while len(tokens) > 1:
            ranks.setdefault((tokens[0], tokens[1]), len(ranks))
            vocab.setdefault(tokens[0] + tokens[1], len(vocab))
            tokens = _apply_merges(tokens, ranks)
    for token in specials:
        vocab.setdefault(token, len(vocab))
    return vocab, list(ranks)


def _apply_merges(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE on one word as the tokenizers library does it: the best-ranked pair first, leftmost on ties."""
    parts = list(parts)
    while len(parts) > 1:
        rank, index = min((ranks.get(pair, len(ranks)), index) for index, pair in enumerate(itertools.pairwise(parts)))
        if rank == len(ranks):
            break
        parts[index:index + 2] = [parts[index] + parts[index + 1]]
    return parts


def _clip_vocab() -> tuple[dict[str, int], Merges]:
    # CLIP marks the end of a word with "</w>" and has every byte in both forms, as the real vocab does.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    words = ([*word[:-1], word[-1] + "</w>"] for word in _WORDS if len(word) > 1)
    return _bpe_vocab(alphabet + [char + "</w>" for char in alphabet], words, _CLIP_SPECIALS)


def _clip_tokenizer(pad_token: str) -> CLIPTokenizer:
    vocab, merges = _clip_vocab()
    # model_max_length must be explicit: without it, truncation to CLIP's 77 positions fails with an overflow.
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token,  # type: ignore[arg-type]  # (see Merges)
                         model_max_length=77)


def _t5_tokenizer() -> T5Tokenizer:
    """A Unigram tokenizer with T5's special tokens and ids (<pad> 0, </s> 1, <unk> 2) and "▁" word starts."""
    pieces: dict[str, float] = {"<pad>": 0.0, "</s>": 0.0, "<unk>": 0.0, "▁": -2.0}
    for word in _WORDS:
        pieces.setdefault("▁" + word, -1.0)
    for char in (chr(code) for code in range(33, 127)):
        pieces.setdefault("▁" + char, -4.0)
        pieces.setdefault(char, -5.0)
    return T5Tokenizer(vocab=list(pieces.items()), model_max_length=512)


def _qwen_vocab() -> tuple[dict[str, int], Merges]:
    # GPT-2 style byte-level BPE: a word after a space starts with "Ġ" (the byte-level form of the space).
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    words = [["Ġ", *word] for word in _WORDS] + [list(word) for word in _WORDS if len(word) > 1]
    return _bpe_vocab(alphabet, words, _QWEN_SPECIALS)


def _qwen_tokenizer() -> Qwen2Tokenizer:
    vocab, merges = _qwen_vocab()
    return Qwen2Tokenizer(vocab=vocab, merges=merges,  # type: ignore[arg-type]  # (see Merges)
                          eos_token="<|im_end|>", pad_token="<|endoftext|>",
                          extra_special_tokens=["<|im_start|>", "<|im_end|>"],
                          chat_template=QWEN_CHAT_TEMPLATE, model_max_length=131072)


def _write_bpe_files(folder: Path, vocab: dict[str, int], merges: Merges) -> None:
    """vocab.json and merges.txt beside tokenizer.json, as the real repos ship (older transformers read these)."""
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{left} {right}" for left, right in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- component construction ------------------------------------------------------------------------------------


def _seeded(factory: Callable[[], ModelT], seed_name: str, size: Size) -> ModelT:
    """Build a model from its own seed, without touching the caller's RNG.

    Full models are built straight in bf16 (the default dtype during the build): half the memory and time of
    building in float32 and casting, which matters at 7.6 B parameters.
    """
    dtype = torch.bfloat16 if size == "full" else torch.float32
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEEDS[seed_name])
        torch.set_default_dtype(dtype)
        try:
            model = factory()
        finally:
            torch.set_default_dtype(previous)
    model.eval()
    if size == "full":
        # The buffers made with an explicit float32 dtype. torch's own `to`: diffusers' override warns about
        # modules to keep in float32, and these models have none.
        torch.nn.Module.to(model, torch.bfloat16)
    return model


def _sdxl_components(size: Size) -> dict[str, Any]:
    text_config, text_config_2 = sdxl_text_encoder_configs(size)
    return {
        "unet": _seeded(lambda: UNet2DConditionModel(**sdxl_unet_config(size)), "unet", size),
        "vae": _seeded(lambda: AutoencoderKL(**sdxl_vae_config(size)), "vae", size),
        "text_encoder": _seeded(lambda: CLIPTextModel(text_config), "text_encoder", size),
        "text_encoder_2": _seeded(lambda: CLIPTextModelWithProjection(text_config_2), "text_encoder_2", size),
        "tokenizer": _clip_tokenizer(pad_token="<|endoftext|>"),
        # OpenCLIP pads with token 0, which SDXL's tokenizer_2 spells "!".
        "tokenizer_2": _clip_tokenizer(pad_token="!"),
        "scheduler": EulerDiscreteScheduler(
            num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            prediction_type="epsilon", interpolation_type="linear", timestep_spacing="leading", steps_offset=1,
            use_karras_sigmas=False),
    }


def _write_sdxl(folder: Path, size: Size) -> None:
    pipe = StableDiffusionXLPipeline(**_sdxl_components(size), add_watermarker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    vocab, merges = _clip_vocab()
    for name in ("tokenizer", "tokenizer_2"):
        _write_bpe_files(folder / name, vocab, merges)


def _write_wan(folder: Path, size: Size) -> None:
    pipe = WanPipeline(
        tokenizer=_t5_tokenizer(),  # type: ignore[arg-type]  # diffusers annotates the AutoTokenizer factory
        text_encoder=_seeded(lambda: UMT5EncoderModel(umt5_config(size)), "umt5", size),
        vae=_seeded(lambda: AutoencoderKLWan(**wan_vae_config(size)), "wan_vae", size),
        transformer=_seeded(lambda: WanTransformer3DModel(**wan_transformer_config(size)), "transformer", size),
        # Wan's UniPC: flow matching with shifted sigmas; the worker sets flow_shift per job.
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                          flow_shift=3.0, num_train_timesteps=1000, solver_order=2),
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _write_enhancer(folder: Path, size: Size) -> None:
    tokenizer = _qwen_tokenizer()
    model = _seeded(lambda: Qwen2ForCausalLM(qwen_config(size)), "qwen", size)
    # Qwen2.5-Instruct's sampling defaults; both end tokens stop generation.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], do_sample=True, temperature=0.7,
        top_p=0.8, top_k=20, repetition_penalty=1.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _write_bpe_files(folder, *_qwen_vocab())


# --- building once, atomically ---------------------------------------------------------------------------------


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {SIZES}, got {size!r}")


def _build_once(out: Path, size: Size, write: Callable[[Path, Size], None]) -> Path:
    """Run `write` into a temp folder beside `out` and rename it into place, unless `out` is already complete.

    A crash leaves at most a stray temp folder, never a half-written `out` that looks complete.
    """
    _check_size(size)
    if is_complete(out, size):
        logger.info("checkpoint %s (%s) is complete, not rebuilding", out, size)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        logger.info("building %s checkpoint in %s", size, out)
        with quiet_progress_bars():
            write(tmp, size)
        (tmp / MARKER).write_text(size)
        _make_readable(tmp)
        if out.exists():
            shutil.rmtree(out)  # an unfinished build, or one of the other size
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _make_readable(folder: Path) -> None:
    """Folders 755, files 644: some writers use 600, and a worker may run as another user than the builder."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


# --- diffusers -> original (LDM) key layout, the inverse of diffusers' single-file converters -------------------

_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_TOP = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_TOP = {"text_model.embeddings.token_embedding.weight": "token_embedding.weight",
                  "text_model.embeddings.position_embedding.weight": "positional_embedding",
                  "text_model.final_layer_norm.weight": "ln_final.weight",
                  "text_model.final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def sdxl_ldm_state_dict(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                        text_encoder_2: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    """The four SDXL models as one state dict with the keys of Stability's original SDXL checkpoints."""
    state: dict[str, torch.Tensor] = {}
    parts = (("model.diffusion_model.", _unet_to_ldm(unet)), ("first_stage_model.", _vae_to_ldm(vae)),
             ("conditioner.embedders.0.transformer.", _clip_to_ldm(text_encoder)),
             ("conditioner.embedders.1.model.", _open_clip_to_ldm(text_encoder_2)))
    for prefix, part in parts:
        state.update({prefix + key: value.detach().contiguous() for key, value in part.items()})
    return state


def _unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    per_block = unet.config["layers_per_block"] + 1  # LDM numbers resnets and samplers in one sequence
    with_attention = ["CrossAttn" in kind for kind in unet.config["up_block_types"]]
    return {_unet_key(key, per_block, with_attention): value for key, value in unet.state_dict().items()}


def _unet_key(key: str, per_block: int, up_with_attention: list[bool]) -> str:
    head, _, param = key.rpartition(".")
    if head in _UNET_TOP:
        return f"{_UNET_TOP[head]}.{param}"
    if match := re.fullmatch(r"(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", head):
        side, block, layer, name = match.groups()
        index = _unet_index(side, int(block), int(layer), per_block)
        return f"{index}.0.{_UNET_RESNET[name]}.{param}"
    if match := re.fullmatch(r"(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", key):
        side, block, layer, rest = match.groups()
        return f"{_unet_index(side, int(block), int(layer), per_block)}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", head):
        return f"input_blocks.{(int(match[1]) + 1) * per_block}.0.op.{param}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", head):
        block = int(match[1])
        slot = 2 if up_with_attention[block] else 1
        return f"output_blocks.{block * per_block + per_block - 1}.{slot}.conv.{param}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(\w+)", head):
        return f"middle_block.{2 * int(match[1])}.{_UNET_RESNET[match[2]]}.{param}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{match[1]}"
    raise ValueError(f"no LDM name for UNet key {key!r}")


def _unet_index(side: str, block: int, layer: int, per_block: int) -> str:
    if side == "down":
        return f"input_blocks.{1 + block * per_block + layer}"
    return f"output_blocks.{block * per_block + layer}"


def _vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    last_up = len(vae.config["up_block_types"]) - 1  # LDM numbers the decoder's levels from the bottom
    return dict(_vae_item(key, value, last_up) for key, value in vae.state_dict().items())


def _vae_item(key: str, value: torch.Tensor, last_up: int) -> tuple[str, torch.Tensor]:
    head, _, param = key.rpartition(".")
    coder, _, rest = head.partition(".")
    if rest in _VAE_TOP or head in ("quant_conv", "post_quant_conv"):
        return (f"{coder}.{_VAE_TOP[rest]}.{param}" if rest else key), value
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        # LDM's attention projections are 1x1 convolutions
        conv = value[:, :, None, None] if value.ndim == 2 else value
        return f"{coder}.mid.attn_1.{_VAE_ATTENTION[match[1]]}.{param}", conv
    resnet = rest.replace("conv_shortcut", "nin_shortcut")
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", resnet):
        return f"{coder}.mid.block_{int(match[1]) + 1}.{match[2]}.{param}", value
    if match := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", resnet):
        return f"{coder}.down.{match[1]}.block.{match[2]}.{match[3]}.{param}", value
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv", rest):
        return f"{coder}.down.{match[1]}.downsample.conv.{param}", value
    if match := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", resnet):
        return f"{coder}.up.{last_up - int(match[1])}.block.{match[2]}.{match[3]}.{param}", value
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv", rest):
        return f"{coder}.up.{last_up - int(match[1])}.upsample.conv.{param}", value
    raise ValueError(f"no LDM name for VAE key {key!r}")


def _clip_to_ldm(text_encoder: CLIPTextModel) -> dict[str, torch.Tensor]:
    # LDM keeps the transformers names under "text_model."; recent transformers flattened that level away.
    return {key if key.startswith("text_model.") else f"text_model.{key}": value
            for key, value in text_encoder.state_dict().items()}


def _open_clip_to_ldm(text_encoder: CLIPTextModelWithProjection) -> dict[str, torch.Tensor]:
    state = text_encoder.state_dict()
    ldm = {_OPEN_CLIP_TOP[key]: value for key, value in state.items() if key in _OPEN_CLIP_TOP}
    ldm["text_projection"] = state["text_projection.weight"].T  # OpenCLIP multiplies from the right
    for key, value in state.items():
        match = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if match is None:
            continue
        layer, module, param = match.groups()
        prefix = f"transformer.resblocks.{layer}"
        if module == "self_attn.q_proj":  # OpenCLIP keeps q, k and v as one in_proj matrix
            fused = torch.cat([state[key.replace("q_proj", name)] for name in ("q_proj", "k_proj", "v_proj")])
            ldm[f"{prefix}.attn.in_proj_{param}"] = fused
        elif module in _OPEN_CLIP_LAYER:
            ldm[f"{prefix}.{_OPEN_CLIP_LAYER[module]}.{param}"] = value
    return ldm
