"""Tokens per update on any number of GPUs (scripts/train_wmt14.sh).

    python -m fairseq_sparsemixer.training.batching TOKENS TOTAL_BATCH WORLD   ->  "MAX_TOKENS UPDATE_FREQ"

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
    print(*split_batch(*map(int, sys.argv[1:4])))
