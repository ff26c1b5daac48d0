"""``mmada playground [MODEL]``: the Gradio playground over the model registry, on 127.0.0.1.

    mmada playground                            # every registered version; http://127.0.0.1:7860
    mmada playground models:/mmada-tiny@grpo    # that version selected (also models:/NAME/3 or a directory)

The registry is ``$MLFLOW_TRACKING_URI`` (default ``runs/mlflow.db``). ``mmada serve`` starts it as
its third UI. A version that does not exist is refused here (status 2) before anything starts.
"""

from __future__ import annotations

import argparse
import os

from mmada.errors import MMaDAError
from mmada.tracking import default_tracking_uri


def _playground(args: argparse.Namespace) -> int:
    from mmada.playground.engine import Playground

    pg = Playground(args.tracking_uri or default_tracking_uri(), cache_dir=args.cache_dir, device=args.device,
                    image_tokenizer=args.image_tokenizer)
    if args.model:
        v = pg.find(args.model)  # a missing version or directory fails here, with its message
        if v.name is None:
            pg.extra.append(v.uri)
    # gradio takes seconds to import: only once the arguments are known to be good
    from mmada.playground.app import launch

    links = {k: v for k, v in (("MLflow", os.environ.get("MMADA_MLFLOW_UI")),
                               ("Prefect", os.environ.get("PREFECT_UI_URL"))) if v}
    print(f"mmada playground: http://127.0.0.1:{args.port} (registry {pg.tracking_uri}; Ctrl-C stops)", flush=True)
    try:
        launch(pg, port=args.port, initial=pg.find(args.model).uri if args.model else None, links=links)
    except OSError as exc:
        raise MMaDAError(f"cannot serve on 127.0.0.1:{args.port} ({exc}); pick another port with --port") from None
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("playground", help="the Gradio playground: chat, understanding and text-to-image with any "
                                          "registered version (127.0.0.1)")
    p.add_argument("model", nargs="?", help="version selected at start: models:/NAME@ALIAS, models:/NAME/VERSION or "
                                            "a checkpoint directory (default: the newest registered version)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    p.add_argument("--image-tokenizer", default=None,
                   help="image tokenizer for understanding / text-to-image: 'palette' (the built-in world's) or a "
                        "MAGVIT-v2 directory (default: the version's training run's, else palette)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--cache-dir", default="runs/playground", help="where registered versions are downloaded")
    p.set_defaults(func=_playground)
