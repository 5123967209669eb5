"""Train the embedded tiny model's transformer and write the weights folder (weights/tiny).

Data: scenes from sjd_min/scenes.py (a fresh batch per step, seeds from TRAIN_SEED on), tokenized
by the VQ from examples/train_tiny_vq.py into 8 x 8 codes, laid out as sjd_min/models/tiny.py
describes (<bos> caption <boi> rows-with-<eol> <eoi>). The loss is next-token cross-entropy on the
output tokens only. 10% of the captions are dropped (empty caption) so that classifier-free
guidance has an unconditional model. The forward is sjd_min.transformer.forward itself, the code
every decoder runs, with a fresh per-layer cache per batch.

    python examples/train_tiny_gpt.py --vq build/tiny --out weights/tiny --force

Fixed seeds: the same command gives the same model (up to floating-point reduction order, which
depends on the thread count). Writes config.json (with a training summary), transformer.safetensors,
vq.safetensors, tokenizer.json and training_log.json; keeps a resumable checkpoint in --vq.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from sjd_min import scenes
from sjd_min import transformer as T
from sjd_min.ar import ar_decode
from sjd_min.checkpoint import flatten, unflatten, write_folder
from sjd_min.family import parse_config
from sjd_min.models import tiny
from sjd_min.sampling import Sampler
from sjd_min.vq import vqgan as V

TRAIN_SEED = 1_000_000  # scene numbers used for training start here (the VQ used 0.., evaluation 9M..)


def leaves(tree) -> list[torch.Tensor]:
    return list(flatten(tree).values())


def make_batch(step: int, batch: int, vq: dict, vq_cfg: V.VQConfig, layout: tiny.Layout, tokenizer,
               drop: float, gen: torch.Generator):
    """(input ids [b, s], targets [b, s] with -100 outside the output) for training step `step`."""
    captions, x = scenes.batch(range(TRAIN_SEED + step * batch, TRAIN_SEED + (step + 1) * batch))
    with torch.no_grad():
        out = layout.to_tokens(V.encode(vq, vq_cfg, x))  # b n
    dropped = torch.rand(batch, generator=gen) < drop
    prompts = [tiny.prompt_ids(tokenizer, layout, "" if d else c) for c, d in zip(captions, dropped.tolist())]
    s = max(len(p) for p in prompts) + layout.n_tokens
    ids = torch.full((batch, s), layout.pad, dtype=torch.long)
    tgt = torch.full((batch, s), -100, dtype=torch.long)
    for i, p in enumerate(prompts):  # right padding: positions stay 0.. for the real tokens
        seq = torch.cat([torch.tensor(p), out[i]])
        ids[i, : len(seq)] = seq
        tgt[i, len(p) - 1 : len(seq) - 1] = out[i]  # the logits at <boi> predict output token 0
    return ids, tgt


def train_logits(params: dict, cfg: T.Config, ids: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits through transformer.forward (per-layer cache tensors, so autograd can
    follow the in-place cache writes)."""
    b, s = ids.shape
    shape = (b, cfg.kv_heads, s, cfg.head_dim)
    cache = dict(k=[torch.zeros(shape) for _ in range(cfg.n_layers)], v=[torch.zeros(shape) for _ in range(cfg.n_layers)],
                 valid=torch.zeros(b, s, dtype=torch.bool), length=torch.zeros(b, dtype=torch.long))
    return T.forward(params, cfg, ids, torch.arange(s).expand(b, s), cache)[0]


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def quick_eval(model: tiny.Tiny, captions: list[str], sampler: Sampler, seed: int = 0) -> float:
    """Checker accuracy of AR samples for `captions` (one batch)."""
    job = model.job(captions, sampler)
    res = ar_decode(job.model, job.prefix, job.n_tokens, sampler, job.constraint, torch.Generator().manual_seed(seed))
    images = scenes.to_uint8(job.decode(res.tokens))
    return sum(scenes.check(im, c)[0] for im, c in zip(images, captions)) / len(captions)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vq", default="build/tiny", help="folder with vq.safetensors and vq_config.json")
    ap.add_argument("--out", default="weights/tiny")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--drop", type=float, default=0.1, help="caption dropout (for classifier-free guidance)")
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--eval-every", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true", help="continue from the checkpoint in --vq")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # nothing should use the global RNG; this only pins stray draws
    vq_dir = Path(args.vq)
    vq_fields = json.loads((vq_dir / "vq_config.json").read_text())
    vq_cfg = parse_config(V.VQConfig, vq_fields, str(vq_dir / "vq_config.json"))
    vq = unflatten(load_file(str(vq_dir / "vq.safetensors")))
    grid = scenes.IMAGE // vq_cfg.factor
    tokenizer = tiny.build_tokenizer(scenes.vocabulary())
    text_vocab = tokenizer.get_vocab_size()
    layout = tiny.Layout(text_vocab=text_vocab, image_offset=text_vocab, codebook_size=vq_cfg.codebook_size, grid=grid)
    cfg = T.Config(vocab_size=text_vocab + vq_cfg.codebook_size, dim=args.dim, n_layers=args.layers,
                   n_heads=args.heads, ffn_dim=args.ffn, rope="1d", rope_interleaved=False)
    gen = torch.Generator().manual_seed(args.seed)
    params = T.init_params(cfg, gen)
    params["embed"] *= 0.1  # small embeddings, and residual branches scaled down with depth (GPT-2 style)
    for layer in params["layers"]:
        layer["attn"]["wo"] /= math.sqrt(2 * cfg.n_layers)
        layer["mlp"]["w_down"] /= math.sqrt(2 * cfg.n_layers)
    decay = [t for k, t in flatten(params).items() if t.ndim == 2 and k != "embed"]
    rest = [t for k, t in flatten(params).items() if not (t.ndim == 2 and k != "embed")]
    for t in leaves(params):
        t.requires_grad_(True)
    opt = torch.optim.AdamW([dict(params=decay, weight_decay=args.weight_decay), dict(params=rest, weight_decay=0.0)],
                            lr=args.lr, betas=(0.9, 0.95))
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    ckpt = vq_dir / "gpt_checkpoint.pt"
    start, curve, evals, t_before = 0, [], [], 0.0
    if args.resume and ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        with torch.no_grad():
            for t, v in zip(leaves(params), leaves(state["params"])):
                t.copy_(v)
        opt.load_state_dict(state["opt"])
        data_gen.set_state(state["data_gen"])
        start, curve, evals, t_before = state["step"], state["curve"], state["evals"], state["seconds"]
        print(f"resumed at step {start}", flush=True)
    n_params = T.param_count(params)
    print(f"transformer: {n_params / 1e6:.2f}M parameters, vocab {cfg.vocab_size} ({text_vocab} text + "
          f"{vq_cfg.codebook_size} image), {layout.n_tokens} output tokens per image", flush=True)

    def model_now() -> tiny.Tiny:
        p = {k: v for k, v in flatten(params).items()}
        return tiny.Tiny(params=unflatten({k: v.detach() for k, v in p.items()}), config=cfg, vq_params=vq,
                         vq_config=vq_cfg, layout=layout, tokenizer=tokenizer, defaults=tiny.DEFAULTS,
                         device=torch.device("cpu"))

    eval_caps = scenes.eval_captions(48, seed=777)
    eval_sampler = Sampler(temperature=1.0, top_k=16, cfg_scale=1.5)
    t0 = time.time() - t_before
    bar = tqdm(range(start, args.steps), desc="gpt", initial=start, total=args.steps, mininterval=10)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, warmup=100)
        ids, tgt = make_batch(step, args.batch, vq, vq_cfg, layout, tokenizer, args.drop, data_gen)
        logits = train_logits(params, cfg, ids)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(leaves(params), 1.0)
        opt.step()
        if step % 25 == 0 or step == args.steps - 1:
            curve.append(dict(step=step, loss=round(loss.item(), 4), grad_norm=round(float(gnorm), 3),
                              lr=round(opt.param_groups[0]["lr"], 6), seconds=round(time.time() - t0, 1)))
            bar.write(json.dumps(curve[-1]))
        if (step + 1) % args.eval_every == 0 or step == args.steps - 1:
            acc = quick_eval(model_now(), eval_caps, eval_sampler)
            evals.append(dict(step=step + 1, checker_accuracy_48=round(acc, 3), seconds=round(time.time() - t0, 1)))
            bar.write(json.dumps(evals[-1]))
            torch.save(dict(params={k: v.detach() for k, v in flatten(params).items()}, opt=opt.state_dict(),
                            data_gen=data_gen.get_state(), step=step + 1, curve=curve, evals=evals,
                            seconds=time.time() - t0), ckpt)
    train_s = time.time() - t0

    vq_log_path = vq_dir / "vq_log.json"
    vq_log = json.loads(vq_log_path.read_text()) if vq_log_path.is_file() else {}
    summary = dict(
        gpt_parameters=n_params, gpt_steps=args.steps, gpt_batch=args.batch, gpt_train_seconds=round(train_s, 1),
        gpt_final_loss=curve[-1]["loss"], vq_train_seconds=vq_log.get("train_seconds"),
        vq_reconstruction=vq_log.get("eval"), scenes_seen=args.steps * args.batch,
    )
    config = dict(
        family=tiny.FAMILY,
        transformer=non_default_fields(cfg),
        vq=vq_fields,
        layout=dataclasses.asdict(layout),
        image_size=scenes.IMAGE,
        training=summary,
    )
    log = dict(args=vars(args), summary=summary, curve=curve, evals=evals, vq=vq_log)
    final = {k: v.detach().contiguous() for k, v in flatten(params).items()}
    write_folder(args.out, config, {"transformer": unflatten(final), "vq": vq},
                 extra_files={"tokenizer.json": tokenizer.to_str(pretty=True).encode(),
                              "training_log.json": (json.dumps(log, indent=1) + "\n").encode()},
                 overwrite=args.force)
    print(f"wrote {args.out} ({train_s / 60:.1f} min): {json.dumps(summary)}", flush=True)


def non_default_fields(x) -> dict:
    """A dataclass's fields that differ from their defaults (config.json stays valid if fields are added)."""
    return {f.name: getattr(x, f.name) for f in dataclasses.fields(x)
            if f.default is dataclasses.MISSING or getattr(x, f.name) != f.default}


if __name__ == "__main__":
    main()
