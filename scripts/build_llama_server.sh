#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` from the llama.cpp that pomar's llama-cpp-python
# vendors (its sdist carries vendor/llama.cpp), with the same portable CPU flags as
# scripts/setup.sh, for scripts/bench_vs_llama_server.py to compare against.
#
#   scripts/build_llama_server.sh        # prints the binary's path on stdout
#
# The result is cached in ~/.cache/pomar/llama-server/<llama-cpp-python version>/: the
# binary, its shared libraries and every CPU variant of the ggml backend (with
# GGML_BACKEND_DL the best variant is dlopen'ed from the binary's own folder), with an
# $ORIGIN rpath so the folder works on its own. A second run is a no-op.
# Run from that folder, llama-server loads the best-scoring variant, sapphirerapids on an
# AMX CPU; a VM that reports AMX without granting the tiles kills it with SIGILL. pomar
# skips that variant (server/engine/gguf/cpu.py), and so does bench_vs_llama_server.py,
# which runs a copy of the binary beside only the variant pomar would load.
# Only the llama-server target is built, niced, on 2 jobs (POMAR_BUILD_JOBS to change):
# about 15 minutes on 2 cores. Environment: LLAMA_CPP_PYTHON (version; default the
# installed one), LLAMA_CPP_SDIST (a local sdist instead of pip download).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${POMAR_VENV:-$ROOT/.venv}"
CACHE_HOME="${XDG_CACHE_HOME:-$HOME/.cache}/pomar"
JOBS="${POMAR_BUILD_JOBS:-2}"

say() { printf '\033[1;32m[pomar]\033[0m %s\n' "$*" >&2; }

version="${LLAMA_CPP_PYTHON:-}"
if [ -z "$version" ]; then
  version="$("$VENV/bin/python" -c \
    'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null ||
    sed -n 's/^LLAMA_CPP_PYTHON=//p' "$ROOT/scripts/setup.sh")"
fi
dest="$CACHE_HOME/llama-server/$version"
if [ -x "$dest/llama-server" ]; then
  echo "$dest/llama-server"
  exit 0
fi

for tool in cmake c++; do
  command -v "$tool" >/dev/null 2>&1 || { say "$tool is missing: install it, then rerun"; exit 1; }
done

# the sdist: given, cached from an earlier run, or fetched from the package index
sdist="${LLAMA_CPP_SDIST:-}"
if [ -z "$sdist" ]; then
  sdist_dir="$CACHE_HOME/sdist"
  sdist="$sdist_dir/llama_cpp_python-$version.tar.gz"
  if [ ! -f "$sdist" ]; then
    say "downloading the llama-cpp-python $version sdist"
    mkdir -p "$sdist_dir"
    "$VENV/bin/python" -m pip download --disable-pip-version-check -q --no-binary :all: \
      --no-deps "llama-cpp-python==$version" -d "$sdist_dir" >&2
  fi
fi
[ -f "$sdist" ] || { say "no sdist at $sdist"; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/pomar-llama-server.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tar -xzf "$sdist" -C "$work" --wildcards '*/vendor/llama.cpp/*'
src="$(echo "$work"/*/vendor/llama.cpp)"
[ -f "$src/CMakeLists.txt" ] || { say "the sdist has no vendor/llama.cpp"; exit 1; }

# scripts/setup.sh's portable flags (never -march=native: a native build faults on this
# kind of VM), Release, only what the server needs; no HTTPS (OpenSSL) and no web UI (the
# prebuilt one would be downloaded from Hugging Face at build time).
flags=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN'
)
option() { grep -Eq "option\\($1[[:space:]]" "$src/CMakeLists.txt" "$src/tools/ui/CMakeLists.txt" 2>/dev/null; }
# newer llama.cpp dropped libcurl (LLAMA_CURL is ignored with a warning) and uses OpenSSL
option LLAMA_CURL && flags+=(-DLLAMA_CURL=OFF)
option LLAMA_OPENSSL && flags+=(-DLLAMA_OPENSSL=OFF)
option LLAMA_BUILD_UI && flags+=(-DLLAMA_BUILD_UI=OFF)
option LLAMA_USE_PREBUILT_UI && flags+=(-DLLAMA_USE_PREBUILT_UI=OFF)
option LLAMA_BUILD_APP && flags+=(-DLLAMA_BUILD_APP=OFF)
command -v ninja >/dev/null 2>&1 && flags+=(-G Ninja)

log="$CACHE_HOME/llama-server/build-$version.log"
mkdir -p "$(dirname "$log")"
say "building llama-server from llama-cpp-python $version's llama.cpp ($JOBS jobs; log: $log)"
started=$SECONDS
if ! {
  echo "cmake ${flags[*]}"
  nice -n 10 cmake -S "$src" -B "$work/build" "${flags[@]}" &&
    nice -n 10 cmake --build "$work/build" -j"$JOBS" --target llama-server
} >"$log" 2>&1; then
  tail -40 "$log" >&2
  say "building llama-server failed; the whole log is in $log"
  exit 1
fi

rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
cp -a "$work/build/bin/llama-server" "$work/build/bin/"*.so* "$dest.tmp/"
"$dest.tmp/llama-server" --version >&2 || { say "the built llama-server does not run"; exit 1; }
rm -rf "$dest"
mv "$dest.tmp" "$dest"
say "built in $((SECONDS - started)) s: $dest"
echo "$dest/llama-server"
