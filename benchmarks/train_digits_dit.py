"""Train the digits DiT and its judge (benchmarks/digits_dit.py) and write both checkpoints.

    python benchmarks/train_digits_dit.py --out benchmarks/assets/digits_dit      # on a GPU, a few minutes

The generator: epsilon prediction under a DDPM schedule, AdamW, bf16 autocast, EMA of the weights (the EMA is
what is saved), labels dropped to the null class with probability 0.1 for classifier-free guidance. The judge:
a small CNN with random 1-pixel shifts and light noise as augmentation. Both train on the same split; the
held-out TEST_SPLIT images give the judge's test accuracy. Afterwards the float generator is sampled at a few
guidance scales and judged, so that the guidance used by benchmarks/quality.py is a measured choice.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import digits_dit as dd  # noqa: E402


def train_generator(x, y, steps, batch, lr, device, max_minutes, log_every=500):
    model = dd.make_generator(seed=0).to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    sched = dd.scheduler("ddpm")
    acp = sched.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator(device=device).manual_seed(0)
    x, y = x.to(device), y.to(device)
    t0, losses, done = time.time(), [], 0
    for step in range(steps):
        for group in opt.param_groups:                       # linear warm-up over 200 steps
            group["lr"] = lr * min(1.0, (step + 1) / 200)
        idx = torch.randint(0, x.shape[0], (batch,), device=device, generator=g)
        x0, lab = x[idx], y[idx].clone()
        drop = torch.rand(batch, device=device, generator=g) < 0.1
        lab[drop] = dd.NULL_CLASS
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), device=device, generator=g)
        noise = torch.randn(x0.shape, device=device, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            pred = model(xt, timestep=t, class_labels=lab, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        done = step + 1
        if done % log_every == 0:
            print(f"  generator step {done}/{steps}: loss {sum(losses[-log_every:]) / log_every:.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        if time.time() - t0 > 60 * max_minutes:
            print(f"  stopping at step {done}: the {max_minutes}-minute budget is spent", flush=True)
            break
    tail = losses[-min(500, len(losses)):]
    return ema, {"steps": done, "batch": batch, "lr": lr, "final_loss": sum(tail) / len(tail),
                 "seconds": round(time.time() - t0, 1)}


def train_classifier(x, y, x_test, y_test, epochs, device):
    torch.manual_seed(0)
    net = dd.DigitsClassifier().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x, y = x.to(device), y.to(device)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(x.shape[0], device=device)
        for lo in range(0, x.shape[0], 128):
            idx = perm[lo:lo + 128]
            xb = x[idx]
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,)))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))          # 1-pixel shifts (background is -1)
            xb = (xb + 0.05 * torch.randn_like(xb)).clamp(-1, 1)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    pred, _ = dd.classify(net, x_test)
    return net, {"epochs": epochs, "test_accuracy": 100.0 * float((pred == y_test).double().mean())}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=dd.ASSETS)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--max-minutes", type=float, default=5.0, help="stop the generator's training after this")
    ap.add_argument("--classifier-epochs", type=int, default=40)
    ap.add_argument("--eval-samples", type=int, default=500)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    os.makedirs(args.out, exist_ok=True)

    x, y = dd.digits_images()
    tr, te = dd.train_test_split(x.shape[0])
    print(f"digits: {x.shape[0]} images, train {tr.numel()}, test {te.numel()}; device {device}", flush=True)

    t0 = time.time()
    net, cinfo = train_classifier(x[tr], y[tr], x[te], y[te], args.classifier_epochs, device)
    _, feats = dd.classify(net, x)
    real_mu, real_cov = dd.feature_stats(feats)
    # the Frechet distance of the held-out real images to all real images: a floor for generated samples
    _, fte = dd.classify(net, x[te])
    cinfo["fd_test_split_vs_all"] = dd.frechet_distance(*dd.feature_stats(fte), real_mu, real_cov)
    cinfo["seconds"] = round(time.time() - t0, 1)
    print(f"judge: test accuracy {cinfo['test_accuracy']:.2f}%, FD(test split, all) "
          f"{cinfo['fd_test_split_vs_all']:.3f} ({cinfo['seconds']} s)", flush=True)

    gen, ginfo = train_generator(x[tr], y[tr], args.steps, args.batch, args.lr, device, args.max_minutes)
    print(f"generator: {ginfo}", flush=True)

    evals = {}
    labels = dd.eval_labels(args.eval_samples)
    noise = dd.initial_noise(args.eval_samples, seed=1)
    for guidance in (1.0, 1.5, 2.0, 3.0):
        imgs = dd.sample(gen, labels, noise, steps=25, guidance=guidance)
        m = dd.sample_metrics(imgs, labels, net, real_mu, real_cov)
        evals[str(guidance)] = m
        print(f"float generator, guidance {guidance}: accuracy {m['accuracy']:.1f}%, FD {m['fd']:.3f}", flush=True)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    common = {"date": stamp, "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "train_images": tr.numel(), "test_images": te.numel()}
    ginfo.update(common, eval_25_ddim_steps=evals, eval_samples=args.eval_samples)
    cinfo.update(common)
    dd.save_generator(gen, os.path.join(args.out, "transformer.safetensors"), ginfo)
    dd.save_classifier(net, real_mu, real_cov, os.path.join(args.out, "classifier.safetensors"), cinfo)
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump({"generator": ginfo, "classifier": cinfo}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
