"""Train the demo model and export it into ossrun's package data.

    python -m demo.train                   # the real run: about 19 minutes on 2 cores
    python -m demo.train --minutes 2 --out /tmp/demo-try   # a quick try

Float32 on the CPU, fixed seed, a wall-clock budget (the learning rate follows the fraction of the
budget used, so a slower machine trains fewer steps on the same schedule). Loss on the assistant's
tokens only. The experts are fake-quantized to MXFP4 in every forward pass.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import dataset, export, tasks
from .model import Config, GptOss

DEFAULT_MINUTES = 19.0
DEFAULT_SEED = 1234
DEFAULT_EXAMPLES = 48000
DEFAULT_TOKENS_PER_BATCH = 3072
DEFAULT_LR = 4e-3
DEFAULT_THREADS = 1
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "ossrun" / "data" / "demo"
CACHE = Path(__file__).resolve().parent / ".cache"
WARMUP_FRACTION = 0.03
FINAL_LR_FRACTION = 0.05
REFUSAL_UNKNOWN_RATE = 0.5  # share of refusal prompts whose words are (partly) replaced by UNK


def corpus(examples: int, seed: int) -> dataset.Corpus:
    """The rendered training set, cached by the code and arguments that produce it."""
    source = b"".join(Path(m.__file__).read_bytes() for m in (tasks, dataset))
    key = hashlib.sha256(source + f"{examples}/{seed}".encode()).hexdigest()[:16]
    path = CACHE / f"corpus-{key}.pickle"
    if path.is_file():
        return pickle.loads(path.read_bytes())
    started = time.monotonic()
    encoding = dataset.load_encoding()
    built = dataset.build_corpus(encoding, dataset.training_examples(examples, seed))
    print(f"rendered {examples} conversations in {time.monotonic() - started:.0f} s", file=sys.stderr)
    CACHE.mkdir(exist_ok=True)
    path.with_suffix(".part").write_bytes(pickle.dumps(built))
    path.with_suffix(".part").replace(path)
    return built


def make_batch(data: dataset.Corpus, indices: list[int], rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs [B, T], targets [B, T] with -100 wherever no loss is taken)."""
    length = max(len(data.sequences[i]) for i in indices)
    inputs = np.zeros((len(indices), length - 1), dtype=np.int64)
    targets = np.full((len(indices), length - 1), -100, dtype=np.int64)
    for row, i in enumerate(indices):
        ids = data.sequences[i]
        if data.tasks[i] == "refusal" and rng.random() < REFUSAL_UNKNOWN_RATE:
            ids = dataset.mask_unknown_words(rng, ids, data.user_spans[i])
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        targets[row, :n] = np.where(data.completion[i][1:], data.sequences[i][1:], -100)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def learning_rate(base: float, progress: float) -> float:
    if progress < WARMUP_FRACTION:
        return base * progress / WARMUP_FRACTION
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - WARMUP_FRACTION) / (1 - WARMUP_FRACTION))))
    return base * (FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * cosine)


def train(args: argparse.Namespace, data: dataset.Corpus) -> GptOss:
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    torch.set_num_threads(args.threads)
    model = GptOss(Config(vocab=data.reduced_size))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    lengths = [len(s) for s in data.sequences]
    budget = args.minutes * 60
    started = time.monotonic()
    step, tokens, last_report, losses = 0, 0, started, []
    print(
        f"vocab {data.reduced_size} (reduced), {len(lengths)} conversations, "
        f"{sum(p.numel() for p in model.parameters())} parameters, budget {args.minutes} min",
        file=sys.stderr,
    )
    while True:
        for indices in dataset.shuffled_batches(lengths, args.tokens_per_batch, rng):
            progress = (time.monotonic() - started) / budget
            if progress >= 1:
                print(f"done: {step} steps, {tokens} tokens in {time.monotonic() - started:.0f} s", file=sys.stderr)
                return model
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(args.lr, progress)
            inputs, targets = make_batch(data, indices, rng)
            # Logits only where there is a target: the prompt's positions need none.
            hidden = model.hidden_states(inputs)
            where = targets >= 0
            loss = F.cross_entropy(model.logits(hidden[where]), targets[where])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            tokens += inputs.numel()
            losses.append(loss.item())
            now = time.monotonic()
            if now - last_report >= args.report_seconds:
                print(
                    f"step {step:5d}  {now - started:6.0f} s  loss {np.mean(losses):.4f}  "
                    f"lr {optimizer.param_groups[0]['lr']:.2e}  {tokens / (now - started):.0f} tok/s",
                    file=sys.stderr,
                )
                losses, last_report = [], now


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES, help="wall-clock training budget")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="training conversations rendered")
    parser.add_argument("--tokens-per-batch", type=int, default=DEFAULT_TOKENS_PER_BATCH)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help="torch threads (on a 2-core machine shared with other work, 1 was 3x faster than 2)",
    )
    parser.add_argument("--report-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the compact checkpoint goes")
    args = parser.parse_args(argv)
    started = time.monotonic()
    data = corpus(args.examples, args.seed)
    model = train(args, data)
    picks = np.random.default_rng(args.seed).choice(len(data.sequences), 64, replace=False)
    samples = [torch.from_numpy(data.sequences[i]) for i in picks]
    facts = export.write_compact(model, data.vocab, args.out, samples)
    # The float32 model too, for evaluating it in torch (python -m demo.evaluate --torch).
    torch.save({"config": model.config.to_dict(), "state": model.state_dict(), "vocab": data.vocab}, CACHE / "last-model.pt")
    print(f"wrote {args.out} {facts} ({time.monotonic() - started:.0f} s in all)", file=sys.stderr)


if __name__ == "__main__":
    main()
