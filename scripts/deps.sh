#!/usr/bin/env bash
# Installs flatmin's Debian build dependencies when any is missing (needs root or sudo).
set -euo pipefail
pkgs=(cmake g++ make libeigen3-dev doctest-dev libbenchmark-dev libthrust-dev libomp-dev zlib1g-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "flatmin: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
