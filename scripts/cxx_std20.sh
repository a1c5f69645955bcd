#!/usr/bin/env bash
# Compiler wrapper for building mmcv 2.1.0 against torch 2.14: mmcv's setup.py hard-codes
# -std=c++17, while torch 2.14's headers need C++20. Swap the flag, keep everything else.
real="${PALE_REAL_CXX:-g++}"
args=()
for a in "$@"; do
  case "$a" in
    -std=c++14|-std=c++17) args+=("-std=c++20") ;;
    *) args+=("$a") ;;
  esac
done
exec "$real" "${args[@]}"
