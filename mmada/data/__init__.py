"""The data platform: declarative specs → reproducible, validated WebDataset shards + manifests.

    specs.py     pydantic CurationSpec (sources, filters, template, split, shards, output)
    sources/     one reader per source type (GSM8K, MATH, s1K, chat, Alpaca, Parquet, HF on disk,
                 img2dataset tars, image Parquet, image folders, LLaVA, IDX, built-ins)
    schema.py    the canonical Sample every shard holds (what training reads)
    curate.py    the curation stages (plan, chunks, dedup/split, shards, finalize) and curate()
    shards.py    deterministic tar writing, Manifest, checksum-verified ShardSet reader
    cli.py       `mmada curate SPEC [--out URI] [--set k=v] [--prefect | --dask [ADDR]]`

The Prefect flow that runs the same stages as tasks lives in ``flows/curate.py``.
"""
