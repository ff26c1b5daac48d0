"""UniGRPO before/after: evaluate an SFT model, run UniGRPO from it, evaluate again, print the change.

What it demonstrates: from a tiny SFT model, N UniGRPO steps on
``builtin:arithmetic`` should raise held-out math accuracy, and on the shapes world the t2i
checker's score. Everything goes through the same commands users run (``mmada eval``,
``mmada train`` with ``configs/train/tiny_grpo.yaml``), and every evaluation is an MLflow run
(experiment ``mmada-eval``, run names ``before-*`` / ``after-*``) next to the ``mmada-grpo`` run.

    python bench/grpo_before_after.py --sft models:/mmada-tiny@sft                 # math + t2i, 40 steps
    python bench/grpo_before_after.py --sft runs/train/tiny-sft/export --tasks math --steps 60 --prompts 16

Both evaluations use the same held-out problems (``--data-seed``, disjoint from training's seeds),
greedy decoding and the same sampler settings, so the deltas are the policy's. Rows: each metric,
before, after, after - before. ``--json`` writes them. Budget on 2 CPU cores: a rollout of 128
text completions (16 prompts × 8) takes ~40 s; each evaluation ~1-2 min.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STREAMS = {"math": "chat", "t2i": "t2i", "mmu": "mmu"}
REWARDS = {"math": "math_correctness", "t2i": "shapes_t2i", "mmu": "mmu_correctness"}
PAIRED = ("math", "t2i")  # suites whose per-item rows feed a paired before/after comparison


def mmada(*argv: str) -> str:
    r = subprocess.run([sys.executable, "-m", "mmada", *argv], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"`mmada {' '.join(argv[:3])} …` failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r.stdout


def evaluate(ckpt: str, tag: str, args, out: Path) -> dict[str, dict[str, float]]:
    res: dict[str, dict[str, float]] = {}
    common = ["--checkpoint", ckpt, "--data-seed", str(args.data_seed), "--batch-size", "64",
              "--tracking-uri", args.tracking_uri, "--experiment", "mmada-eval"]
    if "math" in args.tasks:
        held_out = [*(["--difficulty", args.difficulty] if args.difficulty else []),
                    *(["--exclude-data", *args.chat_data] if args.exclude_train else [])]
        mmada("eval", "math", "--data", "builtin:arithmetic", "--n", str(args.math_n), "--protocol", "gsm8k_flexible",
              "--prompt-template", "{question}", "--think", "--steps", str(args.text_steps),
              "--gen-length", str(args.gen_length), "--block-length", str(args.block_length), *held_out,
              "--out", str(out / f"{tag}-math.json"),
              "--samples-out", str(out / f"{tag}-math.jsonl"), "--run-name", f"{tag}-math", *common)
        res["math"] = json.loads((out / f"{tag}-math.json").read_text())["metrics"]
    if "t2i" in args.tasks:
        mmada("eval", "t2i", "--checker", "shapes", "--data", "builtin:shapes", "--n", str(args.t2i_n),
              "--image-tokenizer", args.image_tokenizer, "--steps", str(args.t2i_steps),
              "--guidance-scale", str(args.guidance_scale),
              "--out", str(out / f"{tag}-t2i.json"), "--images-dir", str(out / f"{tag}-images"),
              "--samples-out", str(out / f"{tag}-t2i.jsonl"), "--run-name", f"{tag}-t2i", *common)
        res["t2i"] = json.loads((out / f"{tag}-t2i.json").read_text())["metrics"]
    return res


def paired_report(suite: str, out: Path) -> dict:
    """Per-item before/after comparison (same problems / captions and sampler seeds), printed and returned.

    Math: problems that turned correct / wrong (exact McNemar). t2i: images that turned correct /
    wrong, and images whose fraction of criteria met rose / fell (exact sign test).
    """
    from mmada.eval.paired import load_scores, load_verdicts, paired_flips, paired_scores

    before, after = out / f"before-{suite}.jsonl", out / f"after-{suite}.jsonl"
    f = paired_flips(load_verdicts(before), load_verdicts(after))
    res = f.as_dict()
    what = "problems" if suite == "math" else "captions"
    print(f"{suite:<6} same {f.n} {what}: {f.gained} turned correct, {f.lost} turned wrong "
          f"(exact McNemar p = {f.p_value:.3g})")
    if suite == "t2i":  # the smooth score the reward optimises: fraction of criteria met per image
        sc = paired_scores(load_scores(before, field="score"), load_scores(after, field="score"))
        res["score"] = sc.as_dict()
        print(f"{suite:<6} fraction of criteria met rose on {sc.rose} images, fell on {sc.fell} "
              f"(exact sign test p = {sc.p_value:.3g}; mean change {sc.mean_delta:+.4f})")
    return res


def grpo_config(args, out: Path) -> Path:
    """configs/train/tiny_grpo.yaml restricted to the chosen tasks, starting from ``--sft``."""
    cfg = yaml.safe_load((REPO / "configs/train/tiny_grpo.yaml").read_text())
    cfg["name"] = args.name
    cfg["model"] = {"init": args.sft}
    streams = cfg["data"]["streams"]
    cfg["data"]["streams"] = {STREAMS[t]: {**streams[STREAMS[t]], "batch_size": args.prompts} for t in args.tasks}
    if "chat" in cfg["data"]["streams"]:
        cfg["data"]["streams"]["chat"]["manifests"] = list(args.chat_data)
    if "t2i" in cfg["data"]["streams"]:
        cfg["data"]["streams"]["t2i"]["manifests"] = list(args.t2i_data)
    cfg["data"]["image_tokenizer"] = args.image_tokenizer
    g = cfg["grpo"]
    g.update(num_generations=args.generations, reward_funcs=[REWARDS[t] for t in args.tasks], beta=args.beta,
             num_iterations=args.num_iterations, estimator=args.estimator, p_mask_prompt=args.p_mask_prompt)
    g["sampler"] = {**g["sampler"], "temperature": args.temperature, "steps": args.text_steps,
                    "gen_length": args.gen_length, "block_length": args.block_length,
                    "threshold": args.rollout_threshold}
    g["image_sampler"] = {**g["image_sampler"], "steps": args.t2i_steps, "guidance_scale": args.guidance_scale}
    if args.mask_ratio_range:
        g["mask_ratio_range"] = list(args.mask_ratio_range)
    g["reward_weights"] = {REWARDS[t]: 1.0 for t in args.tasks}
    cfg["optim"]["lr"] = args.lr
    if args.seed is not None:  # rollout sampling, masks and the prompt draw
        cfg["seed"] = args.seed
        cfg["data"]["seed"] = args.seed
    cfg["trainer"]["max_steps"] = args.steps
    cfg["checkpoint"]["every_n_steps"] = args.steps
    cfg["samples"]["every_n_steps"] = 0
    cfg["tracking"].update(registry=args.register)
    path = out / "grpo.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True, help="the SFT model: an export directory or models:/NAME@ALIAS")
    ap.add_argument("--tasks", default="math,t2i", help="comma-separated: math, t2i, mmu (rewards follow)")
    ap.add_argument("--steps", type=int, default=40, help="UniGRPO steps (policy updates)")
    ap.add_argument("--prompts", type=int, default=8, help="prompts per task per rollout")
    ap.add_argument("--generations", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--beta", type=float, default=0.01, help="KL coefficient (to the frozen SFT policy)")
    ap.add_argument("--num-iterations", type=int, default=2, help="μ: policy updates per rollout")
    ap.add_argument("--estimator", choices=["unigrpo", "d1"], default="unigrpo",
                    help="log-likelihood estimator: UniGRPO's random-ratio completion masks, or d1's full mask")
    ap.add_argument("--mask-ratio-range", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                    help="UniGRPO mask ratio range (default: the config's)")
    ap.add_argument("--p-mask-prompt", type=float, default=0.15, help="d1: prompt-token mask probability")
    ap.add_argument("--math-n", type=int, default=512)
    ap.add_argument("--chat-data", nargs="+", default=["runs/data/arithmetic"],
                    help="curated reasoning shard sets UniGRPO draws its math prompts from")
    ap.add_argument("--difficulty", default=None, help="eval problems with K (or LO-HI) operations; default 1-3")
    ap.add_argument("--exclude-train", action="store_true",
                    help="evaluate on problems whose question is not in --chat-data (mmada eval --exclude-data)")
    ap.add_argument("--gen-length", type=int, default=64,
                    help="text answer length (eval and rollouts alike)")
    ap.add_argument("--block-length", type=int, default=32, help="semi-autoregressive block (eval and rollouts)")
    ap.add_argument("--text-steps", type=int, default=32, help="text sampler steps (eval and rollouts alike)")
    ap.add_argument("--rollout-threshold", type=float, default=None,
                    help="confidence-threshold parallel decoding for the rollouts only (dLLM-RL samples MMaDA's "
                         "rollouts this way at 0.95); the evaluations keep the plain sampler")
    ap.add_argument("--t2i-n", type=int, default=128)
    ap.add_argument("--t2i-steps", type=int, default=12, help="MaskGIT steps (eval and rollouts alike)")
    ap.add_argument("--guidance-scale", type=float, default=2.0, help="classifier-free guidance (eval and rollouts)")
    ap.add_argument("--t2i-data", nargs="+", default=["runs/data/shapes"],
                    help="curated shapes manifests whose captions (and ground truth) UniGRPO's t2i rollouts use")
    ap.add_argument("--data-seed", type=int, default=4242, help="seed of the held-out evaluation problems")
    ap.add_argument("--seed", type=int, default=None, help="UniGRPO run seed (default: the config's)")
    ap.add_argument("--image-tokenizer", default="runs/vq/tiny/tokenizer")
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or runs/mlflow.db")
    ap.add_argument("--register", action="store_true", help="register the result as a model version (@grpo)")
    ap.add_argument("--name", default="grpo-before-after")
    ap.add_argument("--out", default="runs/bench/grpo_before_after")
    ap.add_argument("--json", default=None)
    ap.add_argument("--reuse-before", action="store_true",
                    help="take the 'before' numbers from --out's before-*.json of an earlier run with the same "
                         "--sft and eval options instead of evaluating again")
    args = ap.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in args.tasks if t not in STREAMS]
    if bad or not args.tasks:
        ap.error(f"--tasks: unknown {bad}; choose from {', '.join(STREAMS)}")
    if args.tracking_uri is None:
        sys.path.insert(0, str(REPO))
        from mmada.tracking import default_tracking_uri

        args.tracking_uri = default_tracking_uri()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    sft_ckpt = args.sft
    if sft_ckpt.startswith("models:/"):
        from mmada.tracking.registry import resolve_model

        sft_ckpt = str(resolve_model(sft_ckpt, tracking_uri=args.tracking_uri, cache_dir=out / "cache")[0])

    t0 = time.monotonic()
    if args.reuse_before:
        needed = [out / f"before-{s}.json" for s in args.tasks] + [out / f"before-{s}.jsonl" for s in PAIRED
                                                                    if s in args.tasks]
        missing = [str(p) for p in needed if not p.is_file()]  # the per-problem file feeds the paired comparison
        if missing:
            sys.exit(f"--reuse-before: no earlier evaluation at {', '.join(missing)}")
        before = {s: json.loads((out / f"before-{s}.json").read_text())["metrics"] for s in args.tasks}
    else:
        before = evaluate(sft_ckpt, "before", args, out)
    t1 = time.monotonic()
    summary = json.loads(mmada("train", str(grpo_config(args, out)), "--set", f"tracking.uri={args.tracking_uri}")
                         .strip().splitlines()[-1])
    t2 = time.monotonic()
    after = evaluate(summary["export_dir"], "after", args, out)
    t3 = time.monotonic()

    rows = [{"suite": s, "metric": k, "before": v, "after": after[s][k], "delta": after[s][k] - v}
            for s in before for k, v in before[s].items()]
    print(f"UniGRPO {args.steps} steps on {', '.join(args.tasks)} from {args.sft} (MLflow run {summary['run_id']}; "
          f"eval before {t1 - t0:.0f} s, UniGRPO {t2 - t1:.0f} s, eval after {t3 - t2:.0f} s)")
    print(f"{'suite':<6} {'metric':<28} {'before':>8} {'after':>8} {'delta':>8}")
    for r in rows:
        print(f"{r['suite']:<6} {r['metric']:<28} {r['before']:>8.4f} {r['after']:>8.4f} {r['delta']:>+8.4f}")
    paired = {s: paired_report(s, out) for s in PAIRED if s in args.tasks}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "grpo": summary, "rows": rows,
                                               **{f"{s}_flips": v for s, v in paired.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
