"""Benchmark the data platform: orchestration overhead of the Prefect flow, and shard reading speed.

1. Curation throughput for N built-in reasoning records (``builtin:arithmetic``, answer
   verification, exact dedup, token lengths with the built-in tokenizer): the ``curate`` Prefect
   flow (default thread runner, temporary Prefect API) vs calling ``mmada.data.curate.curate``
   directly. The ratio is the orchestration overhead (or gain from the flow's thread pool).
2. Read throughput of the resulting shards: our checksum-verifying loader
   (``ShardSet.iter_raw(verify=True)``: sha256 of every shard, then member grouping) vs a raw
   ``tarfile`` iteration of the same shards; the decoded path (``iter_samples``: pydantic
   ``Sample`` per record) and WebDataset's own tar reader are printed for context.

"Training loader" here means the shard reader in ``mmada/data/shards.py``, which the training data
module (``mmada.data.loading``) also reads shards with.

    .venv/bin/python bench/bench_data.py                 # 100k records (~3 min on 2 CPU cores)
    .venv/bin/python bench/bench_data.py --records 20000 # quicker
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import tempfile
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def spec_for(n: int):
    from mmada.data.specs import load_spec

    return load_spec("data_specs/arithmetic.yaml", overrides=[f"sources.0.n={n}", "chunk_size=10000",
                                                              "shards.max_samples=10000"])


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def read_raw_tarfile(paths: list[str]) -> int:
    n = 0
    for p in paths:
        with tarfile.open(p, "r|") as tf:
            key = None
            for m in tf:
                data = tf.extractfile(m).read()  # noqa: F841 - read every byte, like a loader must
                k = m.name.split(".", 1)[0]
                if k != key:
                    n, key = n + 1, k
    return n


def read_webdataset(paths: list[str]) -> int:
    import webdataset as wds

    return sum(1 for _ in wds.WebDataset(paths, shardshuffle=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--workdir", default=None, help="where to write shards (default: a temp dir)")
    ap.add_argument("--read-repeats", type=int, default=3)
    args = ap.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from flows.curate import run_curate
    from mmada.data.curate import curate
    from mmada.data.shards import ShardSet
    from mmada.data.tokens import get_tokenizer

    work = args.workdir or tempfile.mkdtemp(prefix="mmada-bench-")
    spec = spec_for(args.records)
    get_tokenizer("builtin")  # train/load the tokenizer once, outside the timings
    lib_out, flow_out = os.path.join(work, "lib"), os.path.join(work, "flow")
    for d in (lib_out, flow_out):
        shutil.rmtree(d, ignore_errors=True)

    m_lib, t_lib = timed(lambda: curate(spec, out=lib_out))
    with prefect_test_harness(server_startup_timeout=90):
        m_flow, t_flow = timed(lambda: run_curate(spec, flow_out))
    assert m_lib.model_dump(exclude={"spec"}) == m_flow.model_dump(exclude={"spec"}), "flow and library disagree"
    n = m_lib.counts.read
    print(f"curation of {n} reasoning records ({m_lib.counts.kept} kept, {len(m_lib.shards)} shards):")
    print(f"  library direct : {t_lib:7.2f} s  {n / t_lib:9.0f} records/s")
    print(f"  prefect flow   : {t_flow:7.2f} s  {n / t_flow:9.0f} records/s   (incl. flow start + artifacts)")
    print(f"  flow / library throughput ratio: {t_lib / t_flow:.2f}x")

    ss = ShardSet.open(lib_out)
    paths = [os.path.join(lib_out, s.name) for s in ss.shards()]
    kept = m_lib.counts.kept
    results = {}
    for name, fn in [
        ("raw tarfile iteration (baseline)", lambda: read_raw_tarfile(paths)),
        ("ShardSet.iter_raw(verify=True)", lambda: sum(1 for _ in ss.iter_raw())),
        ("ShardSet.iter_samples (decoded)", lambda: sum(1 for _ in ss.iter_samples())),
        ("webdataset.WebDataset (no decode)", lambda: read_webdataset(paths)),
    ]:
        best = float("inf")
        for _ in range(args.read_repeats):
            count, t = timed(fn)
            assert count == kept, (name, count, kept)
            best = min(best, t)
        results[name] = kept / best
    print(f"reading {kept} samples from {len(paths)} shards (best of {args.read_repeats}):")
    base = results["raw tarfile iteration (baseline)"]
    for name, rate in results.items():
        print(f"  {name:36s} {rate:10.0f} samples/s   {rate / base:5.2f}x baseline")
    print(f"  verified loader / raw tar iteration ratio: {results['ShardSet.iter_raw(verify=True)'] / base:.2f}x")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
