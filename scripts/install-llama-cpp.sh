#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server and its HF → GGUF converter, into a virtual environment:
#   $VENV/bin/llama-server
#   $VENV/share/llama.cpp/{convert_hf_to_gguf.py, conversion/, gguf-py/}
# PyPI has no llama-server binary, but the llama-cpp-python sdist carries llama.cpp's whole
# source: it is downloaded from PyPI (pinned), and only the server is built (about 4 min on 2
# cores). The build targets AVX2 + FMA + F16C without AVX-512: one binary for both CPU kinds
# users have, so a figure measured on an AVX-512 machine is the AVX2 figure too.
set -euo pipefail
VENV=${1:?usage: install-llama-cpp.sh VENV}
VERSION=0.3.36  # llama-cpp-python, whose vendor/llama.cpp is the source built here
JOBS=$(nproc)
for tool in cmake c++; do
    command -v "$tool" >/dev/null || { echo "install-llama-cpp: $tool not found (Debian: apt install cmake g++)" >&2; exit 1; }
done
GENERATOR=$(command -v ninja >/dev/null && echo Ninja || echo "Unix Makefiles")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$work" "llama-cpp-python==$VERSION"
tar -xzf "$work"/llama_cpp_python-$VERSION.tar.gz -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"

cmake -S "$src" -B "$work/build" -G "$GENERATOR" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON >"$work/cmake.log" \
    || { tail -20 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$JOBS" >"$work/build.log" \
    || { tail -20 "$work/build.log" >&2; exit 1; }

install -m 755 "$work/build/bin/llama-server" "$VENV/bin/llama-server"
share="$VENV/share/llama.cpp"
rm -rf "$share" && mkdir -p "$share"
cp -r "$src/convert_hf_to_gguf.py" "$src/conversion" "$src/gguf-py" "$share/"
echo "llama.cpp (from llama-cpp-python $VERSION): $VENV/bin/llama-server, $share"
