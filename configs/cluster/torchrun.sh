#!/bin/bash
# Training with torchrun, without a scheduler: run this on every node (same arguments; NODE_RANK differs).
#
#   one machine, 8 GPUs:   NNODES=1 configs/cluster/torchrun.sh configs/train/small_pretrain.yaml --set trainer.devices=8
#   two machines:          NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 configs/cluster/torchrun.sh configs/train/8b_sft.yaml --set trainer.num_nodes=2
#                          NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 configs/cluster/torchrun.sh configs/train/8b_sft.yaml --set trainer.num_nodes=2
#   CPU smoke test (two processes as two "nodes", gloo, as tests/test_training_e2e.py does):
#                          NNODES=2 NPROC=1 NODE_RANK=0 configs/cluster/torchrun.sh configs/train/tiny_pretrain.yaml \
#                            --set trainer.num_nodes=2 --set trainer.strategy=ddp --set trainer.accelerator=cpu  (and NODE_RANK=1)
#
# trainer.num_nodes must equal NNODES and trainer.devices must equal NPROC. Static rendezvous on
# MASTER_ADDR:MASTER_PORT; all ranks log into one MLflow run (rank 0 creates it).
set -euo pipefail
CONFIG=${1:?usage: configs/cluster/torchrun.sh CONFIG [--set key=value ...]}
shift
NNODES=${NNODES:-1}
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(nvidia-smi -L 2>/dev/null | wc -l)
  [[ "$NPROC" -gt 0 ]] || NPROC=1
fi
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export PYTORCH_ALLOC_CONF=${PYTORCH_ALLOC_CONF:-expandable_segments:True}

exec ${PYTHON:-python} -m torch.distributed.run \
  --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" \
  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
  -m mmada train "$CONFIG" "$@"
