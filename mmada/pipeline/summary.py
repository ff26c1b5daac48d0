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
        lines += task_lines(ev.get("tasks") or {}, base is not None)
        lines += sample_lines(root / S.EVAL_DIR)
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


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def _acc(k: int, n: int, ci: dict) -> str:
    return f"{_pct(k / n)} [{100 * ci['low']:4.1f}-{100 * ci['high']:4.1f}]"


def task_lines(tasks: dict[str, Any], paired: bool) -> list[str]:
    """The per-task table: accuracy with its 95 % interval; with a baseline the paired flips and p-value."""
    if not tasks:
        return []
    head = f"  {'task':<17} {'n':>4}  {'model':<19}"
    if paired:
        head += f"  {'@sft (baseline)':<19}  {'turned correct / wrong':>22}  {'p (exact)':>9}"
    lines = ["Per task, on held-out items (accuracy [95% Wilson interval]"
             + ("; @grpo vs @sft on the same items and sampler seeds):" if paired else "):"), head]
    for name, t in tasks.items():
        row = f"  {name:<17} {t['n']:>4}  {_acc(t['correct'], t['n'], t['ci95']):<19}"
        if paired and "baseline" in t:
            b, f = t["baseline"], t["paired"]
            row += (f"  {_acc(b['correct'], t['n'], b['ci95']):<19}  "
                    f"{str(f['turned_correct']) + ' / ' + str(f['turned_wrong']):>22}  {f['p_value']:>9.3g}")
        lines.append(row)
    return lines


def sample_lines(ed: Path, k: int = 3) -> list[str]:
    """Three answers per task next to their gold, and the generated-image grid with its captions."""
    lines = ["Sample answers of the evaluated model (first items; gold in brackets):"]
    for row in _first_jsonl(ed / "math_samples.jsonl", k):
        mark = "ok" if row.get("correct") else "x "
        lines.append(f"  {mark} math  {_short(row.get('question', ''), 70)}")
        lines.append(f"           -> {_short(row.get('response') or '(empty answer)', 80)}  "
                     f"(extracted {row.get('extracted')}, gold {row.get('gold')})")
    for row in _first_jsonl(ed / "mmu_samples.jsonl", k):
        mark = "ok" if row.get("correct") else "x "
        answer = row.get("prediction") or "(empty answer)"
        lines.append(f"  {mark} vqa   {_short(row.get('question', ''), 40)} -> {_short(answer, 30)}  "
                     f"(gold {row.get('answer')})")
        if row.get("response"):
            lines.append(f"           trace: {_short(row['response'], 80)}")
    grid = ed / "images" / "generated_grid.png"
    rows = _first_jsonl(ed / "t2i_samples.jsonl", 32)
    if grid.is_file() and rows:
        lines.append(f"  t2i   {grid}: image i (left to right, 8 per row; 'ok' = the checker passed it) was asked for")
        cells = [f"{i:>2} {'ok' if r.get('correct') else 'x '} {_short(r.get('caption', ''), 34):<34}"
                 for i, r in enumerate(rows)]
        lines += ["        " + "  ".join(cells[i : i + 2]) for i in range(0, len(cells), 2)]
    for png in sorted((ed / "images").glob("*.png")):
        if png != grid:
            lines.append(f"  image {png}")
    return lines


def summary_text(root: str | Path = ".") -> str:
    return render(collect(root), root)
