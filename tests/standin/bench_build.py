"""bench/bench_build.py in the TEST STAND-IN toolchain image, its stages sleeping the real
MLC-LLM v0.19.0 stage times: the pipeline's own work (containers, scheduling, cache, packaging)
timed where the real image cannot be built.

The real times (Qwen2.5-0.5B architecture, q4f16_1, 2 cores; real-tiny/README.md, issue 17):
convert_weight 37 s, gen_config < 1 s, compile 39 s, scaled by --time-scale.
Run from the repository root: python -m tests.standin.bench_build [--time-scale 0.25]
[--model PATH] [--hash-gib 1] [--weights-mib 256]
"""

from __future__ import annotations

from collections.abc import Sequence

from bench.bench_build import options_parser, run_benches
from tests.standin.image import ensure_standin_image, standin_toolchain
from webslm.baseimage import LIVE_MIRROR, ensure_base_image
from webslm.cache import default_cache_dir
from webslm.crash import exit_on_error
from webslm.toolchain import docker_client, load_lock

REAL_STAGE_SECONDS = {"convert_weight": 37.0, "gen_config": 0.5, "compile": 39.0}


def main(argv: Sequence[str] | None = None) -> None:
    parser = options_parser(__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=0.25,
                        help="fraction of the real MLC-LLM stage times the stand-in stages sleep")
    args = parser.parse_args(argv)

    def bench() -> None:
        client = docker_client()
        # The lock's mmdebstrap base from the live mirror (the snapshot is unreachable here).
        base = ensure_base_image(client, load_lock().base.with_archives(*LIVE_MIRROR),
                                 default_cache_dir())
        seconds = {stage: t * args.time_scale for stage, t in REAL_STAGE_SECONDS.items()}
        print("TEST STAND-IN toolchain: stages sleep the real MLC-LLM v0.19.0 stage times x "
              f"{args.time_scale}: " + ", ".join(f"{s} {t:.2f} s" for s, t in seconds.items()))
        sleep = ",".join(f"{stage}:{t:.3f}" for stage, t in seconds.items())
        toolchain = standin_toolchain(ensure_standin_image(client, base),
                                      WEBSLM_STANDIN_SLEEP=sleep)
        run_benches(toolchain, args.model, weights_mib=args.weights_mib, hash_gib=args.hash_gib,
                    start_repeats=args.start_repeats)

    exit_on_error("tests.standin.bench_build", bench)


if __name__ == "__main__":
    main()
