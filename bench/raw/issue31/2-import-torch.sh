#!/usr/bin/env bash
# Issue 31: a stage-like container (Debian bookworm python3 3.11.2, the TEST STAND-IN image),
# read-only, tmpfs HOME, no network, PYTHONDONTWRITEBYTECODE=1, imports torch 2.14.1+cu130,
# NumPy 2.4.6 and safetensors from a copy of a venv's site-packages mounted read-only at
# /opt/pkgs: "with" compiled by docker/scripts/compile_bytecode.py /opt/pkgs (in the same
# image), "without" no __pycache__ at all. Interleaved, REPEATS rounds. Per run: the whole
# `docker run` wall (container + interpreter + imports), the import's wall and CPU inside.
IMG=${IMG:-webslm-standin:6f5c0038ae9bd41e}
REPEATS=${REPEATS:-5}
for i in $(seq "$REPEATS"); do for v in with without; do
  for what in "true" "torch, numpy, safetensors" "numpy, safetensors.numpy"; do
    if [ "$what" = true ]; then cmd=(true); else
      cmd=(python3 -c "import os, time; w = time.perf_counter(); import $what; t = os.times(); print(f'{t.user + t.system:.3f} {time.perf_counter() - w:.3f}')"); fi
    start=$(date +%s.%N)
    out=$(docker run --rm --read-only --tmpfs /tmp:rw,exec,mode=1777 --network none -u 1000:1000 \
      -e HOME=/tmp -e PYTHONDONTWRITEBYTECODE=1 -e PYTHONHASHSEED=0 -e PYTHONPATH=/opt/pkgs \
      -v "/tmp/h31pkgs/$v:/opt/pkgs:ro" "$IMG" "${cmd[@]}" 2>/dev/null | tail -1)
    end=$(date +%s.%N)
    echo "${what%%,*} $v $(echo "$end - $start" | bc) ${out:-- -}"
  done
done; done
