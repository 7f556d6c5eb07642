"""Check that llama.cpp runs the exported demo GGUF as torch ran the trained model.

    python -m demo.parity [--gguf FILE]

Feeds held-out conversations (prompt and reference completion) to both, position by position,
and prints the agreement of the next-token logits over the used tokens (cosine, top-1), the
highest logit any unused token gets in llama.cpp, and the lowest margin of the best used token
over it. Development only: it needs torch and imports llama_cpp directly.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from . import dataset
from .evaluate import TorchRunner


def llama_logits(path: str, ids: list[int]) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=2048, logits_all=True, verbose=False, n_threads=2, swa_full=True)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", help="the demo GGUF (default: build/cache it with ossrun.store.demo)")
    parser.add_argument("--state", default="demo/.cache/last-model.pt")
    parser.add_argument("--conversations", type=int, default=6)
    args = parser.parse_args()
    if args.gguf is None:
        from ossrun.store.demo import demo_gguf

        args.gguf = str(demo_gguf())
    runner = TorchRunner(args.state)
    encoding = runner.encoding
    vocab = runner.vocab
    figures = {"all": ([], []), "completion": ([], [])}  # cosines, top-1 agreements
    unused_max, margin = -np.inf, np.inf
    examples = dataset.evaluation_examples(1, seed=3)[: args.conversations]
    unused = np.ones(201088, dtype=bool)
    unused[vocab] = False
    for example in examples:
        rendered = dataset.render(encoding, example)
        ids = rendered.ids
        with torch.no_grad():
            reference = runner.model(torch.from_numpy(dataset.to_reduced(vocab, ids))[None])[0, :, 1:].numpy()
        logits = llama_logits(args.gguf, ids)
        used = logits[:, vocab]
        cos = (used * reference).sum(-1) / np.linalg.norm(used, axis=-1) / np.linalg.norm(reference, axis=-1)
        agree = used.argmax(-1) == reference.argmax(-1)
        predicts_completion = np.array(rendered.completion[1:] + [False])  # position t predicts token t+1
        for name, where in (("all", slice(None)), ("completion", predicts_completion)):
            figures[name][0].extend(cos[where].tolist())
            figures[name][1].extend(agree[where].tolist())
        unused_max = max(unused_max, float(logits[:, unused].max()))
        margin = min(margin, float((used.max(-1) - logits[:, unused].max(-1)).min()))
    for name, (cosines, agreements) in figures.items():
        print(
            f"{name} positions ({len(cosines)}): used-token logits mean cosine {np.mean(cosines):.5f} "
            f"(min {np.min(cosines):.5f}), top-1 agreement {np.mean(agreements):.2%}"
        )
    print(f"highest unused-token logit {unused_max:.1f}; smallest margin of the best used token over it {margin:.1f}")


if __name__ == "__main__":
    os.environ.setdefault("OSSRUN_DATE", "2025-08-05")
    main()
