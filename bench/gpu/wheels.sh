#!/usr/bin/env bash
# Download the wheels a GPU host lacks for one part of bench/gpu/check.py into .whl/ (git-ignored),
# as manylinux / pure-Python wheels for CPython 3.12 on x86-64. The host has torch, transformers,
# peft, accelerate, tokenizers, numpy, pandas, pyarrow, jinja2, rich, click, httpx, prometheus-client
# and werkzeug; at most 64 MiB (repo included) travels per call, and bitsandbytes alone is ~43 MB,
# so the check can also run as two calls (--part train, --part serve),
# each carrying only its own set.
#
#   bench/gpu/wheels.sh all|train|serve          # PIP="/path/to/python -m pip" to use another pip
#   du -sh .whl
set -euo pipefail
part=${1:?usage: wheels.sh all|train|serve}
pip=${PIP:-python3 -m pip}
cd "$(dirname "$0")/../.."

# Pins: the versions tests/test_gpu_bench.py runs with here (.ci/setup's environment).
common="pydantic==2.12.3 pydantic-core==2.41.4 annotated-types==0.8.0 typing-inspection==0.4.5
        typing-extensions==4.16.0 bitsandbytes==0.50.2"
# What `llamafactory-cli train`/`export` imports that the host lacks (av, gradio, fastapi: only
# behind availability checks or in the web UI/API); fsspec: datasets 4.0.0 needs <= 2025.3.0.
train="llamafactory==0.9.5 datasets==4.0.0 trl==0.24.0 dill==0.3.8 multiprocess==0.70.16 omegaconf==2.4.0
       fsspec==2025.3.0"
serve="flask==3.1.3 werkzeug==3.1.9 blinker==1.9.0 itsdangerous==2.2.0 gunicorn==27.0.1"
case "$part" in
  all) wheels="$common $train $serve" ;;  # ~47 MB: fits beside the repo in one call
  train) wheels="$common $train" ;;
  serve) wheels="$common $serve" ;;
  *) echo "part must be all, train or serve, not $part" >&2; exit 2 ;;
esac
rm -rf .whl && mkdir .whl
# shellcheck disable=SC2086  # word splitting of the lists is wanted
$pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl $wheels
du -sh .whl
