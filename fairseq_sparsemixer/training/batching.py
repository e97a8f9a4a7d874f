"""Tokens per update on any number of GPUs (scripts/train_wmt14.sh, docs/multi_node.md).

    python -m fairseq_sparsemixer.training.batching TOKENS TOTAL_BATCH WORLD   ->  "MAX_TOKENS UPDATE_FREQ"
    python fairseq_sparsemixer/training/batching.py --machine TOKENS TOTAL_BATCH
        ->  "GPUS THREADS TENSORBOARD MAX_TOKENS UPDATE_FREQ"

The second is train_wmt14.sh's one Python start for what it reads of the machine: GPUS =
torch.cuda.device_count() (the workers W: GPUS, or 1 on CPU), torch's CPU threads, 1 if
tensorboardX imports, and the batch for W. Run as a file, it does not import the plugin, and
with it fairseq (~6 s a start).

The paper's update is TOKENS × TOTAL_BATCH = 8192 × 16 = 131072 tokens. With W workers
fairseq's update holds (at most) max_tokens × update_freq × W tokens; update_freq =
ceil(TOTAL_BATCH / W) and max_tokens = floor(TOKENS × TOTAL_BATCH / (W × update_freq)) keep
it exact where W divides 16 and within W × update_freq tokens of it otherwise (3 GPUs:
7281 × 6 × 3 = 131058), where ceil(16 / W) alone would give 8192 × 6 × 3 = 147456.
"""
import sys


def split_batch(tokens: int, total_batch: int, world: int):
    if min(tokens, total_batch, world) < 1:
        raise ValueError(f"tokens, total_batch and world must be >= 1, got {tokens}, {total_batch}, {world}")
    update_freq = -(-total_batch // world)
    return tokens * total_batch // (world * update_freq), update_freq


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["--machine"]:  # scripts/train_wmt14.sh: the machine's facts and its batch
        import torch

        try:
            import tensorboardX  # noqa: F401
            tensorboard = 1
        except ImportError:
            tensorboard = 0
        gpus = torch.cuda.device_count()
        print(gpus, torch.get_num_threads(), tensorboard, *split_batch(*map(int, argv[1:3]), max(gpus, 1)))
    else:
        print(*split_batch(*map(int, argv[:3])))
