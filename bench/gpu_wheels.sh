#!/usr/bin/env bash
# Wheels for the GPU machine (bench/gpu_check.sh): its image has Python 3.12 with torch, lightning,
# transformers, numpy, pillow, pandas, scikit-learn, pytest, but nothing can be installed there from
# the network. This downloads, here, the packages the GPU tests and benchmarks import that the image
# lacks, at the versions of constraints.txt, into .whl/ (git-ignored; ~17 MB), to be carried there.
set -euo pipefail
cd "$(dirname "$0")/.."
PKGS="pydantic pydantic-core annotated-types typing-inspection webdataset braceexpand mlflow-skinny mlflow-tracing
      sqlalchemy alembic mako sqlparse greenlet cachetools opentelemetry-api opentelemetry-sdk opentelemetry-proto
      opentelemetry-semantic-conventions databricks-sdk datasketch math-verify latex2sympy2-extended python-dotenv
      gitpython gitdb smmap importlib-metadata"
mkdir -p .whl
for p in $PKGS; do
  pin=$(grep -i "^${p}==" constraints.txt | head -1 || true)
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${pin:-$p}"
done
# antlr4's runtime (math-verify's LaTeX parser) is published as source only: build its (pure Python) wheel
python3 -m pip wheel -q --no-deps -w .whl "$(grep -i '^antlr4-python3-runtime==' constraints.txt)"
du -sh .whl
