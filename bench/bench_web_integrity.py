"""Web client: the cost of checking every weight shard (crypto.subtle SHA-256) on a ~300 MB model.

Side by side in one run, in headless Chromium (Debian's, through tests/browser/driver.mjs) against
the real `webslm serve` server on 127.0.0.1:
  first load   the app's check (download, hash each shard as it arrives, put it in Cache Storage)
               against what web-llm does alone (Cache.add of each shard, four at a time);
  cached load  the app's check of the cached shards against reading them from Cache Storage;
  hashing      crypto.subtle.digest alone over the same bytes (the floor of the check's cost).
The model is a TEST STAND-IN dist (tests/browser/fakedist.py: the real layout and AppConfig, random
shards); its empty library stops the engine after the check, which is all that is timed.
Run: python bench/bench_web_integrity.py [--shards 8] [--shard-mib 36] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from browser.fakedist import make_fake_dist  # noqa: E402
from browser.harness import Browser, Page, browser_missing, running_server  # noqa: E402

from webslm.serve import Site, ensure_web_bundle, find_models  # noqa: E402

MIB = 1024 * 1024
SETTLED = "['refused','error','ready'].includes(document.querySelector('.pane')?.dataset.state)"
# What web-llm 0.2.79 does without our check: Cache.add of every shard, four loops in parallel.
WEBLLM_ALONE = """(async (urls) => {
  const cache = await caches.open('webllm/model');
  const started = performance.now();
  const lanes = 4;
  await Promise.all(Array.from({length: lanes}, async (_, lane) => {
    for (let i = lane; i < urls.length; i += lanes) await cache.add(new Request(urls[i]));
  }));
  return (performance.now() - started) / 1000;
})"""
READ_CACHED = """(async (urls) => {
  const cache = await caches.open('webllm/model');
  const started = performance.now();
  for (const url of urls) await (await cache.match(url)).arrayBuffer();
  return (performance.now() - started) / 1000;
})"""
HASH_ONLY = """(async (urls) => {
  const cache = await caches.open('webllm/model');
  const buffers = [];
  for (const url of urls) buffers.push(await (await cache.match(url)).arrayBuffer());
  const started = performance.now();
  for (const b of buffers) await crypto.subtle.digest('SHA-256', b);
  return (performance.now() - started) / 1000;
})"""


def app_load(page: Page, base: str, model_id: str) -> tuple[float, float]:
    """(check seconds, hashing seconds) of one load in the page, as the app measured them."""
    page.goto(url=f"{base}?a={model_id}")
    page.wait_for("document.body.dataset.ready === 'yes'", 120000)
    if page.eval(js="document.querySelector('.pane').dataset.checkSeconds") is None:
        page.click(selector="#load")
    page.wait_for(SETTLED, 300000)
    pane = page.eval(js="({...document.querySelector('.pane').dataset})")
    assert "checkSeconds" in pane, pane
    return float(pane["checkSeconds"]), float(pane["hashSeconds"])


def timed_js(page: Page, script: str, urls: list[str]) -> float:
    return float(page.eval(js=f"({script})({urls!r})"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-mib", type=int, default=36)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    missing = browser_missing()
    if missing:
        sys.exit(f"bench_web_integrity: {missing}")
    with tempfile.TemporaryDirectory() as scratch:
        dist = Path(scratch) / "dist"
        make_fake_dist(dist, "bench", shards=args.shards, shard_bytes=args.shard_mib * MIB)
        total_mb = args.shards * args.shard_mib * MIB / 1e6
        site = Site(web=ensure_web_bundle(), models=find_models([dist]))
        figures: dict[str, list[float]] = {k: [] for k in (
            "check_first", "hash_first", "webllm_first", "check_cached", "read_cached",
            "hash_only")}
        browser = Browser()
        try:
            with running_server(site) as (base, _):
                urls = [f"{base}models/bench/resolve/main/params_shard_{i}.bin"
                        for i in range(args.shards)]
                for _ in range(args.runs):
                    page = browser.page(webgpu=True)  # a fresh context: empty caches
                    check, hashing = app_load(page, base, "bench-q4f32_1")
                    figures["check_first"].append(check)
                    figures["hash_first"].append(hashing)
                    check, _ = app_load(page, base, "bench-q4f32_1")  # loads from the cache
                    figures["check_cached"].append(check)
                    figures["read_cached"].append(timed_js(page, READ_CACHED, urls))
                    figures["hash_only"].append(timed_js(page, HASH_ONLY, urls))
                    page.close()
                    page = browser.page(webgpu=True)
                    page.goto(url=base + "build-info.json")
                    figures["webllm_first"].append(timed_js(page, WEBLLM_ALONE, urls))
                    page.close()
        finally:
            browser.close()
    median = {k: statistics.median(v) for k, v in figures.items()}
    print(f"model: {args.shards} shards x {args.shard_mib} MiB = {total_mb:.0f} MB, "
          f"median of {args.runs} runs, headless Chromium, 127.0.0.1")
    print(f"{'':34}{'seconds':>9}{'MB/s':>9}")
    rows = [
        ("first load, web-llm alone", median["webllm_first"]),
        ("first load, app with shard check", median["check_first"]),
        ("  of which crypto.subtle hashing", median["hash_first"]),
        ("cached load, read Cache Storage", median["read_cached"]),
        ("cached load, app with shard check", median["check_cached"]),
        ("crypto.subtle SHA-256 alone", median["hash_only"]),
    ]
    for label, seconds in rows:
        print(f"{label:34}{seconds:9.2f}{total_mb / seconds:9.0f}")
    first = median["check_first"] / median["webllm_first"]
    cached = median["check_cached"] / median["read_cached"]
    print(f"first load:  check / web-llm alone = {first:.2f}x")
    print(f"cached load: check / plain read    = {cached:.2f}x")


if __name__ == "__main__":
    main()
