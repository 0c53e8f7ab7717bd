#!/usr/bin/env bash
# Serve the GPU profile with NVIDIA's Triton container (not runnable on the CPU development machine).
#   python -m export.build_repository --profile gpu --out build/model_repository_gpu
#   deploy/ngc/run_gpu.sh build/model_repository_gpu
# The image is deploy/docker/Dockerfile.triton (NGC 24.10 with the python steps' dependencies baked in):
#   docker build -f deploy/docker/Dockerfile.triton --build-arg REPOSITORY=build/model_repository_gpu -t cxr-triage-triton:0.1.0 .
set -euo pipefail
REPO=$(realpath "${1:-build/model_repository_gpu}")
IMAGE=${TRITON_IMAGE:-cxr-triage-triton:0.1.0}   # Triton 2.51 (the CPU wheel's release) + the steps' dependencies
exec docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \
  -v "$REPO":/models "$IMAGE" tritonserver --model-repository=/models
