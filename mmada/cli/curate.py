"""``mmada curate``: curate a data spec into shards (the same code as the Prefect flow).

    mmada curate data_specs/gsm8k.yaml --set sources.0.uri=/data/gsm8k/train.jsonl
    mmada curate data_specs/arithmetic.yaml --out s3://bucket/data/arithmetic
    mmada curate data_specs/shapes.yaml --prefect            # run as the Prefect flow
    mmada curate data_specs/shapes.yaml --dask               # … on a local Dask cluster
    mmada curate data_specs/shapes.yaml --dask tcp://127.0.0.1:8786   # … on an existing one
    mmada curate data_specs/shapes.yaml --out runs/data/other --overwrite  # replace another dataset there

Without ``--prefect``/``--dask`` the stages run in this process (no Prefect server needed).
Spec errors are reported as ``error: invalid spec: <field>: <reason>`` before anything is written.
An output directory holds one dataset: ``--out`` naming another dataset's output is refused (exit
status 2) unless ``--overwrite``; a second curation into an output that one is writing is refused too.
"""

from __future__ import annotations

import argparse
import json


def _curate(args: argparse.Namespace) -> int:
    from mmada.data.specs import load_spec

    spec = load_spec(args.spec, overrides=args.set)
    if args.prefect or args.dask is not None:
        from flows.curate import run_curate

        manifest = run_curate(spec, args.out, force=args.force, keep_work=args.keep_work, overwrite=args.overwrite,
                              runner="dask" if args.dask is not None else "default", dask_address=args.dask or None)
    else:
        from mmada.data.curate import curate

        def progress(stage: str, done: int, total: int) -> None:
            if not args.quiet:
                print(f"\r{stage}: {done}/{total}", end="\n" if done == total else "", flush=True)

        manifest = curate(spec, out=args.out, force=args.force, keep_work=args.keep_work, overwrite=args.overwrite,
                          progress=progress)
    out = args.out or spec.output_uri()
    if args.json:
        print(json.dumps({"output": out, "spec_hash": manifest.spec_hash, "counts": manifest.counts.model_dump(),
                          "shards": len(manifest.shards)}))
    else:
        c = manifest.counts
        print(f"{manifest.name}: read {c.read} = kept {c.kept} + rejected {c.rejected}; "
              f"{len(manifest.shards)} shards -> {out}")
        if manifest.rejected_by_reason:
            print("rejected: " + ", ".join(f"{k}={v}" for k, v in manifest.rejected_by_reason.items()))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("curate", help="curate a data spec into WebDataset shards + manifest",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="data spec YAML (local path or fsspec URL)")
    p.add_argument("--out", default=None, help="output URI (overrides the spec's `output`)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set sources.0.uri=data.jsonl --set shards.max_samples=500")
    p.add_argument("--prefect", action="store_true", help="run as the Prefect `curate` flow")
    p.add_argument("--dask", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the flow on Dask: a local cluster, or the scheduler at ADDRESS")
    p.add_argument("--force", action="store_true", help="rebuild even if the output already holds this content")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another dataset's output at --out (refused otherwise: a directory holds one dataset)")
    p.add_argument("--keep-work", action="store_true", help="keep intermediate files under <out>/_work")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_curate)
