"""The end-of-pipeline summary: shards, tokenizers, registered versions, the eval table, samples, UIs.

    mmada pipeline summary        # also printed at the end of `mmada pipeline`

Everything is read back from the pipeline's outputs and the MLflow registry (nothing is kept in
memory between stages), so the summary is the same after `dvc repro`, `mmada pipeline` or a
Prefect run, and says which stages have not run yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmada.pipeline import stages as S
from mmada.pipeline import tracking as T
from mmada.pipeline.evaluate import eval_rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _first_jsonl(path: Path, n: int) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
            if len(rows) >= n:
                break
    return rows


def _num(v: Any, signed: bool = False) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:+.4f}" if signed else f"{v:.4f}"
    return str(v)


def _short(text: Any, n: int = 90) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def collect(root: str | Path = ".") -> dict[str, Any]:
    root = Path(root)
    out: dict[str, Any] = {"datasets": [], "missing": []}
    for name in S.DATASETS:
        m = _read_json(root / S.data_dir(name) / "manifest.json")
        if m is None:
            out["missing"].append(f"curate-{name}")
            continue
        splits = {k: v.get("samples") for k, v in m.get("splits", {}).items()}
        out["datasets"].append({"name": name, "path": S.data_dir(name), "shards": len(m.get("shards", [])),
                                "splits": splits, "rejected": m.get("counts", {}).get("rejected", 0)})
    tok = root / S.TOKENIZER_DIR / "tokenizer.json"
    out["tokenizer"] = S.TOKENIZER_DIR if tok.is_file() else None
    out["vq"] = _read_json(root / S.metrics_file("vq")) if (root / S.VQ_DIR / "model.safetensors").is_file() else None
    out["refs"] = {s: _read_json(root / S.model_ref(s)) for s in S.TRAIN_STAGES}
    out["eval"] = _read_json(root / S.metrics_file("eval"))
    out["missing"] += [s for s in ("tokenizer", "vq") if not out[s]]
    out["missing"] += [s for s, r in out["refs"].items() if r is None]
    if out["eval"] is None:
        out["missing"].append("evaluate")
    names = {r["registered_model"] for r in out["refs"].values() if r}
    out["registry"] = {}
    uri = T.tracking_uri()
    out["tracking_uri"] = uri
    for n in sorted(names):
        try:
            out["registry"][n] = T.registry(uri, n)
        except Exception as exc:
            out["registry"][n] = {"error": str(exc)}
    return out


def render(info: dict[str, Any], root: str | Path = ".") -> str:
    root = Path(root)
    lines = ["", "=" * 78, "mmada pipeline summary", "=" * 78]
    lines.append("Shards (WebDataset tars + manifest.json):")
    for d in info["datasets"]:
        splits = ", ".join(f"{v} {k}" for k, v in d["splits"].items())
        lines.append(f"  {d['path']:<24} {d['shards']} shards, {splits} samples ({d['rejected']} rejected)")
    if info["tokenizer"]:
        lines.append(f"Text tokenizer:  {info['tokenizer']}")
    if info["vq"]:
        psnr = info["vq"].get("final_psnr")
        lines.append(f"Image tokenizer: {S.VQ_DIR}" + (f"  (val PSNR {psnr:.2f} dB)" if psnr is not None else ""))
    lines.append(f"Registered models (MLflow at {info['tracking_uri']}):")
    if not info["registry"]:
        lines.append("  (none yet)")
    for name, reg in info["registry"].items():
        if reg is None or "error" in reg:
            lines.append(f"  {name}: cannot read the registry ({(reg or {}).get('error', 'not found')})")
            continue
        by_version: dict[str, list[str]] = {}
        for alias, v in reg["aliases"].items():
            by_version.setdefault(str(v), []).append(f"@{alias}")
        versions = ", ".join(f"v{v['version']}" + (" " + " ".join(sorted(by_version[v["version"]]))
                                                    if v["version"] in by_version else "")
                             for v in reg["versions"])
        lines.append(f"  {name}: {versions}")
    for stage, ref in info["refs"].items():
        if ref:
            lines.append(f"  {stage:<9} -> {ref['model_uri']}  (run {ref.get('run_id', '')[:12]}, "
                         f"{ref.get('global_step')} steps)")
    ev = info["eval"]
    if ev:
        base = ev.get("baseline")
        lines.append(f"Evaluation of {ev.get('model')} ({S.metrics_file('eval')}):")
        if base:
            lines.append(f"  {'suite':<7} {'metric':<28} {'value':>8}  {'baseline':>8}  {'delta':>8}"
                         f"   (baseline: {base.get('model')} = @sft, before UniGRPO)")
        else:
            lines.append(f"  {'suite':<7} {'metric':<28} {'value':>8}")
        for r in eval_rows(ev):
            row = f"  {r['suite']:<7} {r['metric']:<28} {_num(r['value']):>8}"
            if base:
                row += f"  {_num(r['baseline']):>8}  {_num(r['delta'], signed=True):>8}"
            lines.append(row)
        ed = root / S.EVAL_DIR
        lines.append("Sample outputs:")
        for row in _first_jsonl(ed / "math_samples.jsonl", 3):
            q = row.get("question") or row.get("prompt") or row.get("id", "")
            a = row.get("response") or row.get("prediction") or ""
            lines.append(f"  math  {_short(q, 60)}: {_short(a) or '(empty answer)'!s}  (gold {row.get('gold', row.get('answer'))})")
        for row in _first_jsonl(ed / "mmu_samples.jsonl", 2):
            a = _short(row.get("prediction", ""), 40) or "(empty answer)"
            lines.append(f"  mmu   {_short(row.get('question', ''), 60)} {a}  (gold {row.get('answer')})")
        for png in sorted((ed / "images").glob("*.png")):
            lines.append(f"  image {png}")
    for stage in S.TRAIN_STAGES:
        p = root / S.plot_file(stage)
        if p.is_file():
            lines.append(f"Curve: {p}")
    if info["missing"]:
        lines.append(f"Not run yet: {', '.join(info['missing'])}  (run `mmada pipeline`)")
    lines += [
        "Open the UIs:  make ui   (or: mmada serve)",
        "  Prefect  http://127.0.0.1:4200  -> Deployments -> a flow -> Run -> Custom run (validated form)",
        "  MLflow   http://127.0.0.1:5000  -> Experiments (mmada-pretrain, mmada-sft, …) / Models -> mmada-tiny",
        "  DVC      dvc metrics show ; dvc plots show (writes dvc_plots/index.html) ; dvc dag",
        "=" * 78,
    ]
    return "\n".join(lines)


def summary_text(root: str | Path = ".") -> str:
    return render(collect(root), root)
