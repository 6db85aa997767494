# The ourvidz GPU worker image, for RunPod (a pod pulling from Redis by default, or a serverless endpoint).
#   docker build -t ourvidz-worker .                      # weights mounted at /models at run time
#   docker build --build-arg BAKE_WEIGHTS=1 -t ourvidz-worker .   # weights baked into the image
# Serverless (docs/production.md §5.1): set the container command to  python -m handler.runpod_serverless
#   and OURVIDZ_CHECKPOINTS_DIR to the network volume, e.g. /runpod-volume/ourvidz/models.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OURVIDZ_CHECKPOINTS_DIR=/models OURVIDZ_WORK_DIR=/tmp/ourvidz HF_HOME=/models/.hf \
    RUNPOD_LOG_LEVEL=WARN

RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app
# A CUDA torch first, so the worker extra's `torch>=2.5` is already met.
RUN pip install torch==2.9.1 --index-url https://download.pytorch.org/whl/cu128
COPY pyproject.toml README.md ./
COPY ourvidz ./ourvidz
COPY jobs ./jobs
COPY handler ./handler
COPY models ./models
COPY edge_api ./edge_api
COPY supabase ./supabase
COPY scripts/download_weights.py ./scripts/download_weights.py
RUN pip install '.[worker]'

ARG BAKE_WEIGHTS=0
RUN if [ "$BAKE_WEIGHTS" = "1" ]; then python scripts/download_weights.py --out /models; fi

RUN useradd --create-home --uid 1000 ourvidz && mkdir -p /models /tmp/ourvidz && chown -R ourvidz /models /tmp/ourvidz
USER ourvidz

CMD ["ourvidz", "worker", "--queues", "sdxl,wan"]
