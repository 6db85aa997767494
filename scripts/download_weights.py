"""Download the real weights into the folder layout the worker loads (`sdxl/`, `wan/`, `qwen/`).

Used by the Dockerfile (baked into the image) or at pod start (onto a network volume):
    python scripts/download_weights.py --out /models [--sdxl-file URL-or-repo-file]
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPOS = {
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    "wan": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
    "qwen": "Qwen/Qwen2.5-7B-Instruct",
}
# Only what the diffusers/transformers loaders read: no duplicate fp32 or .bin copies.
ALLOW = ["*.json", "*.txt", "*.model", "*.safetensors", "tokenizer*", "merges.txt", "vocab*", "*.jinja"]
IGNORE = ["*.bin", "*.onnx*", "*.msgpack", "*.ckpt", "*fp32*", "*.pth"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for sdxl/, wan/, qwen/")
    parser.add_argument("--only", choices=sorted(REPOS), action="append", help="download only these models")
    parser.add_argument("--sdxl-repo", default=REPOS["sdxl"], help="another SDXL repository (e.g. a LUSTIFY mirror)")
    parser.add_argument("--sdxl-file", default=None, help="a single .safetensors file in --sdxl-repo to fetch instead")
    args = parser.parse_args(argv)

    from huggingface_hub import hf_hub_download, snapshot_download

    repos = {**REPOS, "sdxl": args.sdxl_repo}
    for name in args.only or sorted(repos):
        target = args.out / name
        if name == "sdxl" and args.sdxl_file:
            hf_hub_download(repos[name], args.sdxl_file, local_dir=target)
            continue
        snapshot_download(repos[name], local_dir=target, allow_patterns=ALLOW, ignore_patterns=IGNORE)
        print(f"{name}: {target}")


if __name__ == "__main__":
    main()
