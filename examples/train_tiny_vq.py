"""Train the embedded tiny model's image tokenizer: a LlamaGen-architecture VQ (sjd_min/vq/vqgan.py,
L2-normalised codebook) on 32x32 scenes from sjd_min/scenes.py, 4x downsampling -> 8x8 codes.

Losses (VQGAN without the perceptual / adversarial terms, which flat synthetic scenes do not need):
    reconstruction  |x - x'|_1 + |x - x'|^2
    codebook        |sg(z) - z_q|^2          (moves the codes to the encoder outputs)
    commitment      beta |z - sg(z_q)|^2     (keeps the encoder near its codes)
with z, z_q L2-normalised and the straight-through estimator z + sg(z_q - z) into the decoder.
Codes unused for `--restart-every` steps are restarted at random encoder outputs of the batch.

    python examples/train_tiny_vq.py --out build/tiny      (about 12 minutes on 2 busy CPU cores)

Writes vq.safetensors, vq_config.json and vq_log.json (loss curve, checker score of the
reconstructions) into --out. Fixed seeds: the same command gives the same tokenizer.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file
from tqdm import tqdm

from sjd_min import scenes
from sjd_min.checkpoint import flatten
from sjd_min.vq import vqgan as V

# The fields set here; the rest keep VQConfig's defaults (written to vq_config.json).
VQ_FIELDS = dict(
    codebook_size=256, embed_dim=8, z_channels=64, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1,
    attn_levels=(2,), mid_attn=True, l2_norm=True,
)
EVAL_SEED = 9_000_000  # reconstructions are scored on scenes from here on (never trained on)


def leaves(tree) -> list[torch.Tensor]:
    return list(flatten(tree).values())


def vq_losses(params: dict, cfg: V.VQConfig, x: torch.Tensor, beta: float):
    """(total loss, parts, codes) for a batch of images."""
    z = F.normalize(V.encode_latent(params, cfg, x), dim=1)  # b e h w
    codes = V.quantize(params, cfg, z)  # b h w
    zq = V.codebook_rows(params, cfg, codes)  # b e h w, L2-normalised rows
    codebook = F.mse_loss(zq, z.detach())
    commit = F.mse_loss(z, zq.detach())
    rec = V.decode_latent(params, cfg, z + (zq - z).detach())  # straight-through
    recon = (rec - x).abs().mean() + (rec - x).pow(2).mean()
    return recon + codebook + beta * commit, dict(recon=recon.item(), codebook=codebook.item()), codes, z


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(params: dict, cfg: V.VQConfig, n: int) -> dict:
    """Checker accuracy of reconstructions of `n` unseen scenes, code usage and pixel error."""
    caps, x = scenes.batch(range(EVAL_SEED, EVAL_SEED + n))
    codes = V.encode(params, cfg, x)
    rec = V.decode(params, cfg, codes)
    ok = [scenes.check(img, cap)[0] for img, cap in zip(scenes.to_uint8(rec), caps)]
    counts = torch.bincount(codes.flatten(), minlength=cfg.codebook_size).float()
    p = counts / counts.sum()
    return dict(checker_accuracy=sum(ok) / n, n=n, codes_used=int((counts > 0).sum()),
                code_perplexity=float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())),
                pixel_l1=float((rec.clamp(-1, 1) - x).abs().mean()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="build/tiny")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--beta", type=float, default=0.25, help="commitment weight")
    ap.add_argument("--restart-every", type=int, default=100, help="restart codes unused for this many steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # nothing should use the global RNG; this only pins stray draws
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = V.VQConfig(**VQ_FIELDS)
    gen = torch.Generator().manual_seed(args.seed)
    params = V.init_params(cfg, gen)
    for t in leaves(params):
        t.requires_grad_(True)
    opt = torch.optim.Adam(leaves(params), lr=args.lr, betas=(0.9, 0.99))
    n_params = sum(t.numel() for t in leaves(params))
    print(f"VQ: {n_params / 1e6:.2f}M parameters, {cfg.codebook_size} codes x {cfg.embed_dim}, "
          f"{scenes.IMAGE}px -> {scenes.IMAGE // cfg.factor}x{scenes.IMAGE // cfg.factor} codes", flush=True)

    used = torch.zeros(cfg.codebook_size, dtype=torch.bool)
    curve, t0 = [], time.time()
    bar = tqdm(range(args.steps), desc="vq", mininterval=10)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, warmup=50)
        _, x = scenes.batch(range(step * args.batch, (step + 1) * args.batch))
        loss, parts, codes, z = vq_losses(params, cfg, x, args.beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        used[codes.flatten()] = True
        if (step + 1) % args.restart_every == 0 and step + 1 < args.steps * 0.8:
            dead = (~used).nonzero()[:, 0]
            if len(dead):  # restart dead codes at encoder outputs of this batch
                pool = rearrange(z.detach(), "b e h w -> (b h w) e")
                pick = torch.randint(0, pool.shape[0], (len(dead),), generator=gen)
                with torch.no_grad():
                    params["codebook"][dead] = pool[pick]
            parts["restarted"] = len(dead)
            used.zero_()
        if step % 50 == 0 or step == args.steps - 1:
            curve.append(dict(step=step, loss=round(loss.item(), 5), seconds=round(time.time() - t0, 1),
                              **{k: round(v, 5) for k, v in parts.items()}))
            bar.write(json.dumps(curve[-1]))
    train_s = time.time() - t0
    for t in leaves(params):
        t.requires_grad_(False)
    result = evaluate(params, cfg, 400)
    print("reconstructions:", json.dumps(result), flush=True)
    save_file({k: v.contiguous() for k, v in flatten(params).items()}, str(out / "vq.safetensors"))
    (out / "vq_config.json").write_text(json.dumps(VQ_FIELDS, indent=2) + "\n")
    log = dict(args=vars(args), parameters=n_params, train_seconds=round(train_s, 1), eval=result, curve=curve)
    (out / "vq_log.json").write_text(json.dumps(log, indent=2) + "\n")
    print(f"wrote {out}/vq.safetensors ({train_s / 60:.1f} min)")


if __name__ == "__main__":
    main()
