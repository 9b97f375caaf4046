#!/usr/bin/env bash
# Reproduces the tuning behind digits_demo's defaults: the same grid for every optimizer, on a
# noisy validation split (--tune: 80/20 split of the noisy training split), seeds 100..104, never
# the test split. Prints one line per configuration: mean ± std validation accuracy (noisy labels).
#   examples/tune_digits_demo.sh build/release/examples/digits_demo
set -euo pipefail
demo=${1:?usage: $0 PATH/TO/digits_demo}
common=(--tune --first-seed 100 --seeds 5)
for wd in 5e-3 1e-2 2e-2; do
  for lr in 0.02 0.05 0.1; do
    echo "sgd  lr=$lr wd=$wd          $("$demo" "${common[@]}" --only sgd --lr "$lr" --weight-decay "$wd" | grep '^sgd ' | tail -1)"
    for rho in 0.05 0.1 0.2; do
      echo "sam  lr=$lr wd=$wd rho=$rho $("$demo" "${common[@]}" --only sam --lr "$lr" --weight-decay "$wd" --rho-sam "$rho" | grep '^sam ' | tail -1)"
    done
    for rho in 0.25 0.5 1; do
      echo "asam lr=$lr wd=$wd rho=$rho $("$demo" "${common[@]}" --only asam --lr "$lr" --weight-decay "$wd" --rho-asam "$rho" | grep '^asam ' | tail -1)"
    done
  done
done
