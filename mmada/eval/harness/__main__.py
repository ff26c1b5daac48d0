"""``python -m mmada.eval.harness [lm_eval arguments]``: lm-eval's CLI with ``--model mmada`` registered."""

from mmada.eval.harness import main

main()
