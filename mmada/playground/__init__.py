"""The playground: try any registered model version in the browser (Gradio), beside the Prefect and MLflow UIs.

    mmada playground                          # every version of the registry; http://127.0.0.1:7860
    mmada playground models:/mmada-tiny@sft   # that version selected (also: models:/NAME/3, a directory)

    mmada.playground.versions   the registry as the version picker shows it (aliases, lineage, eval metrics)
    mmada.playground.engine     load a version and run the samplers step by step (text, understanding, images)
    mmada.playground.app        the Gradio page over the engine

The page binds to 127.0.0.1. Gradio's usage analytics are off (``GRADIO_ANALYTICS_ENABLED``, set
here before gradio is imported), and the page loads no web fonts, so it works offline.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
