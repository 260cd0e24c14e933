#!/usr/bin/env bash
# Compile check of the Windows sources of the addon with Debian's mingw-w64 cross
# compiler (syntax and types only: nothing is linked). Prints one line per file and
# exits non-zero if any file fails to compile or compiles with a warning.
#
#   .ci/check-windows.sh            (installs g++-mingw-w64-x86-64 with apt-get if needed)
#   NODE_HEADERS_DIR=/path/to/include/node .ci/check-windows.sh
set -u -o pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# node-addon-api's napi.h needs std::mutex, which the 'win32' thread model of GCC < 13
# lacks: prefer the 'posix' variant (MSVC, the real Windows compiler, has both).
pick_compiler() {
  for c in x86_64-w64-mingw32-g++-posix x86_64-w64-mingw32-g++; do
    if command -v "$c" >/dev/null 2>&1; then echo "$c"; return 0; fi
  done
  return 1
}

if ! cxx="$(pick_compiler)"; then
  echo "installing the mingw-w64 cross compiler (g++-mingw-w64-x86-64)..."
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  if ! { $sudo apt-get update -qq >/dev/null &&
         DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq g++-mingw-w64-x86-64 >/dev/null; }; then
    echo "FAIL: cannot install g++-mingw-w64-x86-64 with apt-get" >&2
    exit 2
  fi
  if ! cxx="$(pick_compiler)"; then
    echo "FAIL: x86_64-w64-mingw32-g++ is still missing after installing g++-mingw-w64-x86-64" >&2
    exit 2
  fi
fi

node_headers="${NODE_HEADERS_DIR:-/usr/include/node}"
if [ ! -f "$node_headers/node_api.h" ] || [ ! -f "$node_headers/uv.h" ]; then
  echo "FAIL: no Node headers (node_api.h, uv.h) in $node_headers; set NODE_HEADERS_DIR" >&2
  exit 2
fi
if ! addon_api="$(node -p "require('node-addon-api').include_dir" 2>/dev/null)"; then
  echo "FAIL: node-addon-api is not installed (npm ci)" >&2
  exit 2
fi
case "$addon_api" in /*) ;; *) addon_api="$root/$addon_api" ;; esac

flags=(-std=c++17 -fsyntax-only -Wall -Wextra -D_WIN32_WINNT=0x0A00 -DNAPI_VERSION=8
       -DNAPI_CPP_EXCEPTIONS -DBUILDING_NODE_EXTENSION -I"$node_headers" -I"$addon_api")

files=(native/addon.cc native/common.cc)
for f in native/win/*.cc; do files+=("$f"); done

# All files at once (a few seconds each), reported in order.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
pids=()
for i in "${!files[@]}"; do
  ( "$cxx" "${flags[@]}" "${files[$i]}" >"$tmp/$i.out" 2>&1; echo $? >"$tmp/$i.rc" ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done

failed=0
for i in "${!files[@]}"; do
  rc="$(cat "$tmp/$i.rc")"
  if [ "$rc" != 0 ]; then
    echo "FAIL  ${files[$i]} (errors)"
    failed=$((failed + 1))
  elif [ -s "$tmp/$i.out" ]; then
    echo "FAIL  ${files[$i]} (warnings)"
    failed=$((failed + 1))
  else
    echo "ok    ${files[$i]}"
  fi
done
for i in "${!files[@]}"; do
  if [ -s "$tmp/$i.out" ]; then
    echo
    echo "--- ${files[$i]}"
    cat "$tmp/$i.out"
  fi
done

echo "$cxx: ${#files[@]} files, $failed failed"
[ "$failed" = 0 ]
