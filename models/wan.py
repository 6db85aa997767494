"""Wan 2.1 T2V 1.3B text-to-video (and one-frame images), resident, with the negative-prompt embeddings cached."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from diffusers.pipelines.wan.pipeline_wan import WanPipeline
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler

from models.device import StepCallback, dtype_for, quiet_progress_bars, seeded_generator, step_callback

logger = logging.getLogger(__name__)

#: Wan 2.1's default negative prompt (its `sample_neg_prompt`), in the Chinese that UMT5 was conditioned on.
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，"
    "丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，"
    "静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走"
)

#: Wan's text length: prompts are padded (and truncated) to 512 UMT5 tokens.
MAX_SEQUENCE_LENGTH = 512
_NEGATIVE_CACHE_SIZE = 8


class WanGenerator:
    """A resident Wan pipeline; `generate` returns the frames of one seeded video as uint8."""

    def __init__(self, pipe: WanPipeline, device: torch.device) -> None:
        self.pipe = pipe
        self.device = device
        self._shift = float(pipe.scheduler.config.flow_shift)
        self._negatives: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> WanGenerator:
        """Load a diffusers Wan folder; bf16 on CUDA (DiT, UMT5 and VAE), float32 on the CPU."""
        target = torch.device(device)
        dtype = dtype_for(target)
        with quiet_progress_bars():
            pipe = WanPipeline.from_pretrained(Path(path), dtype=dtype, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(target)
        logger.info("Wan loaded from %s on %s (%s)", path, target, dtype)
        return cls(pipe, target)

    def generate(self, prompt: str, negative_prompt: str | None, *, width: int, height: int, frames: int,
                 steps: int, guidance: float, shift: float, seed: int, on_step: StepCallback | None = None,
                 ) -> np.ndarray:
        """A video as a (frames, height, width, 3) uint8 array; `frames=1` makes an image."""
        latents = self.denoise(prompt, negative_prompt, width=width, height=height, frames=frames, steps=steps,
                               guidance=guidance, shift=shift, seed=seed, on_step=on_step)
        return self.decode(latents)

    @staticmethod
    def check_inputs(prompt: str, *, width: int, height: int, frames: int, steps: int, guidance: float,
                     shift: float) -> None:
        """Refuse what the pipeline would silently round or reject, naming the argument and its value."""
        if not prompt or not prompt.strip():
            raise ValueError(f"`prompt` must be a non-empty string, got {prompt!r}")
        for name, value in (("width", width), ("height", height)):
            if value <= 0 or value % 16:
                raise ValueError(f"`{name}` must be a positive multiple of 16, got {value}")
        if frames < 1 or (frames - 1) % 4:
            raise ValueError(f"`frames` must be 4k+1 (1, 5, ..., 81), got {frames}")
        if steps < 1:
            raise ValueError(f"`steps` must be at least 1, got {steps}")
        if guidance < 0:
            raise ValueError(f"`guidance` must be >= 0, got {guidance}")
        if shift <= 0:
            raise ValueError(f"`shift` must be > 0, got {shift}")

    def denoise(self, prompt: str, negative_prompt: str | None, *, width: int, height: int, frames: int,
                steps: int, guidance: float, shift: float, seed: int, on_step: StepCallback | None = None,
                ) -> torch.Tensor:
        """The denoised latents, before the VAE (separate so the decode can be timed on its own)."""
        self.check_inputs(prompt, width=width, height=height, frames=frames, steps=steps, guidance=guidance,
                          shift=shift)
        self._use_shift(shift)
        prompt_embeds = self._encode(prompt)
        negative_embeds = self._negative_embeds(negative_prompt) if guidance > 1.0 else None
        started = time.perf_counter()
        result = self.pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            width=width,
            height=height,
            num_frames=frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=seeded_generator(self.device, seed),
            output_type="latent",
            callback_on_step_end=step_callback(on_step),
        )
        logger.debug("Wan denoised %dx%dx%d in %d steps in %.2f s", width, height, frames, steps,
                     time.perf_counter() - started)
        latents: torch.Tensor = result.frames
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """Latents (1, 16, T, H/8, W/8) to frames (F, H, W, 3) uint8, as WanPipeline decodes them."""
        vae = self.pipe.vae
        latents = latents.to(vae.device, vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
        std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
        video = vae.decode(latents * std + mean, return_dict=False)[0]  # (1, 3, F, H, W) in [-1, 1]
        pixels = ((video[0].float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(1, 2, 3, 0).cpu().numpy()

    def _use_shift(self, shift: float) -> None:
        # Rebuilding the scheduler is cheap but not free; most jobs share one shift.
        if shift != self._shift:
            config = self.pipe.scheduler.config
            self.pipe.scheduler = UniPCMultistepScheduler.from_config(config, flow_shift=shift)
            self._shift = shift

    @torch.no_grad()
    def _encode(self, text: str) -> torch.Tensor:
        embeds, _ = self.pipe.encode_prompt(prompt=text, do_classifier_free_guidance=False,
                                            max_sequence_length=MAX_SEQUENCE_LENGTH, device=self.device)
        return embeds

    def _negative_embeds(self, negative_prompt: str | None) -> torch.Tensor:
        """UMT5 runs once per distinct negative prompt; most jobs use the default one."""
        text = negative_prompt or DEFAULT_NEGATIVE_PROMPT
        if text in self._negatives:
            self._negatives.move_to_end(text)
        else:
            self._negatives[text] = self._encode(text)
            if len(self._negatives) > _NEGATIVE_CACHE_SIZE:
                self._negatives.popitem(last=False)
        return self._negatives[text]
