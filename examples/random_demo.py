"""Decoders side by side on a small *random* transformer (not representative of a trained model):
forward calls of AR, SJD and the coupled refresh modes at W = 4, 8, 16 on the same seeds."""

import argparse
import time

import torch

from sjd_min import transformer as T
from sjd_min.ar import ar_decode
from sjd_min.decoding import Constraint, Prefix
from sjd_min.sampling import Sampler
from sjd_min.sjd import REFRESH_MODES, JacobiConfig, sjd_decode


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()

    cfg = T.Config(vocab_size=512, dim=128, n_layers=4, n_heads=4, ffn_dim=384, qk_norm=True)
    params = T.init_params(cfg, torch.Generator().manual_seed(0))
    for layer in params["layers"]:  # sharper than a plain random init, so the distributions are not flat
        layer["mlp"]["w_down"] *= 4
    prompt = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(1))
    n, sampler = args.tokens, Sampler(temperature=args.temperature, top_k=args.top_k, cfg_scale=2.0)
    constraint = Constraint.free(n, cfg.vocab_size)
    print(f"random transformer ({T.param_count(params) / 1e6:.1f}M parameters), {n} tokens, CFG 2.0, "
          f"top-k {args.top_k}, seeds 0..{args.seeds - 1}: random weights, not a trained model\n")
    print(f"| method | W | forward calls (mean) | step compression | wall s |\n|---|---|---|---|---|")
    runs = [("ar", 1, None)] + [(m, w, m) for w in (4, 8, 16) for m in REFRESH_MODES]
    for name, w, refresh in runs:
        calls, t0 = [], time.perf_counter()
        for seed in range(args.seeds):
            pre = Prefix(*T.prefill(params, cfg, prompt, torch.arange(8).expand(2, 8), 8 + n + 16))
            gen = torch.Generator().manual_seed(seed)
            if refresh is None:
                out = ar_decode(T.model_fn(params, cfg), pre, n, sampler, constraint, gen)
            else:
                out = sjd_decode(T.model_fn(params, cfg), pre, n, sampler, constraint, gen,
                                 JacobiConfig(window=w, refresh=refresh))
            calls.append(out.forward_calls)
        mean = sum(calls) / len(calls)
        label = "sjd" if name == "independent" else name
        print(f"| {label} | {w} | {mean:.1f} | {n / mean:.2f}x | {(time.perf_counter() - t0) / args.seeds:.2f} |")


if __name__ == "__main__":
    main()
