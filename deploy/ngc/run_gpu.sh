#!/usr/bin/env bash
# Serve the GPU profile with NVIDIA's Triton container (not runnable on the CPU development machine).
#   python -m export.build_repository --profile gpu --out build/model_repository_gpu
#   deploy/ngc/run_gpu.sh build/model_repository_gpu
# The python steps (cxr_preprocess, triage_router) need numpy<2, Pillow, OpenCV, SciPy and pydicom in the
# container's Python: the image below adds them on start; bake your own image for production.
set -euo pipefail
REPO=$(realpath "${1:-build/model_repository_gpu}")
IMAGE=${TRITON_IMAGE:-nvcr.io/nvidia/tritonserver:24.10-py3}   # Triton 2.51, the same release as the CPU wheel
exec docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 \
  -v "$REPO":/models "$IMAGE" bash -c \
  "pip install -q 'numpy<2' pillow 'opencv-python-headless<4.12' scipy pydicom && tritonserver --model-repository=/models"
