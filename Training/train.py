"""Train the default brain tissue / lesion model on synthetic data from the MNI ICBM152 template.

Usage::

    python -m Training.train --out training-runs/default --minutes 140 --seed 0 [--resume]

Cases are synthesised on the fly (:mod:`Training.synth`) by one DataLoader
worker while the main process trains.  ``--minutes`` is the total training wall time, summed
over resumed sessions.  Every ``--val-every`` minutes (and at the end, and on SIGTERM/SIGINT)
the run validates, writes a resumable checkpoint ``<out>/checkpoint.pt`` (tensors and plain
data only: ``torch.load(..., weights_only=True)`` reads it) and exports the best weights so far
(by mean validation Dice) to ``<models-dir>/brain_tissue_lesion_unet.safetensors`` with the
model description ``brain_tissue_lesion_unet.json``.  Re-running with the same ``--out``
resumes from the checkpoint.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import sys
import time
from typing import Dict, List

import numpy as np
import torch

from Training import synth
from MedAnalysisLib.core.segment.netconfig import MODEL_NAME, build_network, count_parameters, default_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL_SEEDS = (1001, 1002, 1003, 1004)  # one per held-out label map (synth.HELD_OUT_MAPS)
VAL_CONTRASTS = ("t1", "flair", "t2", "t1")
VAL_WHOLE_HEAD = (True, False, True, False)


class SynthStream(torch.utils.data.IterableDataset):
    """Endless stream of synthetic (image, label) patches; the anatomies are loaded in the worker.

    Each case draws its anatomy: the MNI template with probability ``mni_prob``, otherwise one of
    the training label maps (real subjects) in ``label_map_dir``.
    """

    def __init__(self, sample_dir: str, label_map_dir: str, seed: int, start_step: int, patch: int, mni_prob: float,
                 lesion_free_prob: float = 0.0):
        super().__init__()
        self.lesion_free_prob = lesion_free_prob
        self.sample_dir = sample_dir
        self.label_map_dir = label_map_dir
        self.seed = seed
        self.start_step = start_step
        self.patch = patch
        self.mni_prob = mni_prob

    def __iter__(self):
        torch.set_num_threads(1)
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        mni = synth.load_template(self.sample_dir)
        maps = [synth.load_label_map(p) for p in synth.label_map_paths(self.label_map_dir)] if self.label_map_dir else []
        rng = np.random.default_rng([self.seed, self.start_step, wid])
        while True:
            template = mni if not maps or rng.random() < self.mni_prob else maps[int(rng.integers(len(maps)))]
            img, lab, _ = synth.synthesize_case(template, rng, self.patch, lesion_free_prob=self.lesion_free_prob)
            yield torch.from_numpy(img[None]), torch.from_numpy(lab[None].astype(np.int64))


def lr_at(frac: float, base: float, warmup: float = 0.02, floor: float = 0.02) -> float:
    """Cosine schedule over the fraction of the time budget used, with a short linear warm-up."""
    if frac < warmup:
        return base * max(frac / warmup, 0.05)
    f = min(1.0, (frac - warmup) / (1 - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * f)))


def dice_per_class(pred: np.ndarray, gt: np.ndarray, n: int = 5) -> List[float]:
    out = []
    for c in range(1, n):
        p, g = pred == c, gt == c
        gs = int(g.sum())
        if gs == 0:
            out.append(float("nan"))
            continue
        out.append(float(2.0 * np.logical_and(p, g).sum() / (p.sum() + gs)))
    return out


def build_validation(template, label_map_dir, log) -> List[dict]:
    cases = []
    held_out = synth.label_map_paths(label_map_dir, held_out=True) if label_map_dir else []
    for path, seed, contrast, whole_head in zip(held_out, VAL_SEEDS, VAL_CONTRASTS, VAL_WHOLE_HEAD):
        anatomy = synth.load_label_map(path)
        (img, lab, info), = synth.make_validation_set(anatomy, [seed], whole_head=[whole_head], contrast=contrast)
        name = f"{anatomy.name[-2:]}_{contrast}_{'head' if whole_head else 'stripped'}"
        cases.append({"name": name, "image": img, "label": lab, "info": info})
    img, lab, info = synth.template_case(template)
    cases.append({"name": "mni152_t1", "image": img, "label": lab, "info": info})
    for c in cases:  # crop to the brain (plus margin) to save time; whole-head context stays around it
        idx = np.argwhere(c["label"] > 0)
        lo = np.maximum(idx.min(0) - 12, 0)
        hi = np.minimum(idx.max(0) + 13, c["label"].shape)
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        c["image"], c["label"] = c["image"][sl].copy(), c["label"][sl].copy()
        log(f"validation case {c['name']}: shape {c['image'].shape}, lesion {(c['label'] == 4).sum() / 1000.0:.2f} mL")
    return cases


@torch.no_grad()
def validate(net, cases, cfg) -> Dict:
    from monai.inferers import sliding_window_inference

    inf = cfg["inference"]
    net.eval()
    res = {}
    all_d = []
    for c in cases:
        x = torch.from_numpy(c["image"])[None, None]
        logits = sliding_window_inference(
            x, roi_size=inf["roi_size"], sw_batch_size=inf["sw_batch_size"], predictor=net,
            overlap=inf["overlap"], mode=inf["mode"],
        )
        pred = logits.argmax(1)[0].numpy().astype(np.uint8)
        d = dice_per_class(pred, c["label"])
        entry = {"dice": [None if math.isnan(v) else round(v, 4) for v in d]}
        if not (c["label"] == 4).any():
            entry["lesion_false_positive_ml"] = round(float((pred == 4).sum()) / 1000.0, 3)
        res[c["name"]] = entry
        all_d += [v for v in d if not math.isnan(v)]
    net.train()
    res["mean_dice"] = round(float(np.mean(all_d)), 4) if all_d else 0.0
    return res


def _fmt_val(v: Dict) -> str:
    parts = []
    for k, e in v.items():
        if not isinstance(e, dict):
            continue
        d = " ".join("-" if x is None else f"{x:.3f}" for x in e["dice"])
        extra = f" lesFP {e['lesion_false_positive_ml']}mL" if "lesion_false_positive_ml" in e else ""
        parts.append(f"{k}[csf gm wm les]={d}{extra}")
    score = f" score {v['score']:.4f}" if "score" in v else ""
    return f"mean {v['mean_dice']:.4f}{score} | " + " | ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run directory (checkpoint, log, best weights)")
    ap.add_argument("--minutes", type=float, default=140.0, help="total training wall time (summed over resumes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resume", action="store_true", help="resume from <out>/checkpoint.pt (also automatic when it exists)")
    ap.add_argument("--sample-dir", default=os.path.join(_REPO, "Resources", "SampleData"))
    ap.add_argument("--label-maps", default=os.path.join(_REPO, "Training", "Data", "synthseg_label_maps"),
                    help="folder of real-subject label maps (SynthSeg training maps); '' for the MNI template only")
    ap.add_argument("--mni-prob", type=float, default=0.15, help="share of training cases drawn from the MNI template")
    ap.add_argument("--models-dir", default=os.path.join(_REPO, "Resources", "Models"), help="where the best weights are exported")
    ap.add_argument("--init", default=None,
                    help="warm start: initial network weights (.safetensors with the same network config); "
                         "ignored when resuming from a checkpoint")
    ap.add_argument("--max-step-s", type=float, default=30.0,
                    help="a step counts at most this long against the budget (a paused run does not use it up)")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--lesion-weight", type=float, default=2.0,
                    help="cross-entropy weight of the lesion class (the others have 1)")
    ap.add_argument("--lesion-free-prob", type=float, default=0.0,
                    help="share of training cases without any lesion (teaches the network not to report lesions everywhere)")
    ap.add_argument("--fp-penalty", type=float, default=0.0,
                    help="checkpoint selection score = mean validation Dice - this x false-positive lesion mL "
                         "on the lesion-free validation case (MNI T1)")
    ap.add_argument("--val-every", type=float, default=10.0, help="minutes between validation + checkpoint + export")
    ap.add_argument("--log-every", type=int, default=25, help="steps between log lines")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.models_dir, exist_ok=True)
    log_path = os.path.join(args.out, "train.log")
    ckpt_path = os.path.join(args.out, "checkpoint.pt")

    def log(msg: str) -> None:
        line = f"{datetime.datetime.now().isoformat(timespec='seconds')} {msg}"
        print(line, flush=True)
        with open(log_path, "a") as f:
            f.write(line + "\n")

    torch.set_num_threads(args.threads)
    cfg = default_config()
    cfg["inference"]["roi_size"] = [args.patch] * 3
    command = "python -m Training.train " + " ".join(sys.argv[1:] if argv is None else argv)

    state = {"step": 0, "elapsed_s": 0.0, "best_mean_dice": -1.0, "best_step": -1, "history": [], "sessions": 0}
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    net = build_network(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    best_state = None
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        for k in state:
            if k in ck["state"]:
                state[k] = ck["state"][k]
        best_state = ck.get("best_model")
        torch.set_rng_state(ck["torch_rng"])
        log(f"resumed from {ckpt_path}: step {state['step']}, elapsed {state['elapsed_s'] / 60:.1f} min, "
            f"best mean Dice {state['best_mean_dice']:.4f} at step {state['best_step']}")
    elif args.resume:
        log(f"--resume given but no checkpoint at {ckpt_path}: starting fresh")
    if args.init and not os.path.exists(ckpt_path):
        from safetensors.torch import load_file

        net.load_state_dict(load_file(args.init))
        log(f"warm start from {args.init}")
    state["sessions"] += 1
    n_params = count_parameters(net)
    log(f"start session {state['sessions']}: {command} | torch {torch.__version__} | python {platform.python_version()} | "
        f"{platform.platform()} | cpu_count {os.cpu_count()} | threads {args.threads} | params {n_params} | "
        f"patch {args.patch} batch {args.batch}")

    total_s = args.minutes * 60.0
    if state["elapsed_s"] >= total_s:
        log(f"time budget already used ({state['elapsed_s'] / 60:.1f} of {args.minutes} min); nothing to do")
        return 0

    template = synth.load_template(args.sample_dir)
    val_cases = build_validation(template, args.label_maps, log)
    del template

    from monai.losses import DiceCELoss

    class_weights = [1.0, 1.0, 1.0, 1.0, float(args.lesion_weight)]
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=torch.tensor(class_weights))
    ds = SynthStream(args.sample_dir, args.label_maps, args.seed, state["step"], args.patch, args.mni_prob,
                     args.lesion_free_prob)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=args.batch, num_workers=args.workers, prefetch_factor=4 if args.workers else None,
        persistent_workers=bool(args.workers),
    )

    def summary() -> Dict:
        return {
            "seed": args.seed,
            "command": command,
            "steps": state["step"],
            "warm_start": args.init,
            "batch_size": args.batch,
            "patch_size": [args.patch] * 3,
            "wall_time_min": round(state["elapsed_s"] / 60.0, 1),
            "sessions": state["sessions"],
            "optimizer": f"AdamW lr {args.lr} wd {args.weight_decay}, cosine over the time budget ({args.minutes} min)",
            "loss": f"DiceCELoss(softmax, to_onehot_y, batch=True, CE class weights {class_weights})",
            "data": "synthetic, generated on the fly (Training.synth) from 16 real-subject label maps "
                    "(SynthSeg training maps 01-16, Apache-2.0) and the MNI ICBM152 2009a template "
                    f"({args.mni_prob:.0%} of cases); contrasts T1/T2/PD/FLAIR/random "
                    f"{synth.TRAIN_CONTRAST_PROBS}",
            "hardware": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                         "cpu_count": os.cpu_count(), "torch_threads": args.threads, "device": "cpu"},
            "software": {"python": platform.python_version(), "torch": torch.__version__,
                         "monai": __import__("monai").__version__, "numpy": np.__version__},
            "parameters": n_params,
            "best_step": state["best_step"],
            "best_mean_dice": state["best_mean_dice"],
            "selection": f"best validation score = mean Dice - {args.fp_penalty} x false-positive lesion mL",
            "lesion_free_prob": args.lesion_free_prob,
            "validation_cases": "held-out label maps 17-20 rendered as T1 head, FLAIR stripped, T2 head, T1 stripped "
                                "(seeds 1001-1004), and mni152_t1 (real template T1, no lesions); "
                                "Dice for [CSF, GM, WM, lesion]",
            "validation_history": state["history"],
        }

    def export() -> None:
        from safetensors.torch import save_file

        if best_state is None:
            return
        meta = dict(cfg)
        meta["training"] = summary()
        tensors = {k: v.detach().cpu().contiguous() for k, v in best_state.items()}
        for path in (os.path.join(args.out, "best.safetensors"), os.path.join(args.models_dir, MODEL_NAME + ".safetensors")):
            tmp = path + ".tmp"
            save_file(tensors, tmp, metadata={"format": "pt", "name": MODEL_NAME, "config": json.dumps({k: cfg[k] for k in cfg})})
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        jpath = os.path.join(args.models_dir, MODEL_NAME + ".json")
        with open(jpath + ".tmp", "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        os.replace(jpath + ".tmp", jpath)

    def checkpoint() -> None:
        ck = {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "state": dict(state),
            "best_model": best_state,
            "torch_rng": torch.get_rng_state(),
            "args": {k: v for k, v in vars(args).items()},
            "config": json.dumps(cfg),
        }
        tmp = ckpt_path + ".tmp"
        torch.save(ck, tmp)
        os.replace(tmp, ckpt_path)

    def val_and_save(tag: str) -> None:
        nonlocal best_state
        t0 = time.time()
        v = validate(net, val_cases, cfg)
        v["step"] = state["step"]
        v["elapsed_min"] = round(state["elapsed_s"] / 60.0, 1)
        state["history"].append(v)
        fp_ml = sum(e.get("lesion_false_positive_ml", 0.0) for e in v.values() if isinstance(e, dict))
        v["score"] = round(v["mean_dice"] - args.fp_penalty * fp_ml, 4)
        improved = v["score"] > state["best_mean_dice"]
        if improved:
            state["best_mean_dice"] = v["score"]
            state["best_step"] = state["step"]
            best_state = {k: t.detach().clone() for k, t in net.state_dict().items()}
        checkpoint()
        export()
        log(f"VAL {tag} step {state['step']} ({time.time() - t0:.0f}s){' *best*' if improved else ''}: {_fmt_val(v)}")

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    net.train()
    it = iter(loader)
    t_last = time.time()
    last_val = state["elapsed_s"]
    losses, t_data, t_step = [], 0.0, 0.0
    log(f"training: {args.minutes} min budget, {state['elapsed_s'] / 60:.1f} min done")
    while not stop["flag"]:
        t0 = time.time()
        try:
            x, y = next(it)
        except Exception:
            if stop["flag"]:
                break
            raise
        t1 = time.time()
        lr = lr_at(state["elapsed_s"] / total_s, args.lr)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 12.0)
        opt.step()
        t2 = time.time()
        state["step"] += 1
        state["elapsed_s"] += min(t2 - t_last, args.max_step_s)
        t_last = t2
        losses.append(float(loss.detach()))
        t_data += t1 - t0
        t_step += t2 - t1
        if state["step"] % args.log_every == 0:
            n = len(losses)
            log(f"step {state['step']} loss {np.mean(losses):.4f} lr {lr:.2e} elapsed {state['elapsed_s'] / 60:.1f} min "
                f"| {t_step / n:.2f} s/step compute, {t_data / n:.2f} s/step data wait")
            losses, t_data, t_step = [], 0.0, 0.0
        if state["elapsed_s"] >= total_s:
            break
        if state["elapsed_s"] - last_val >= args.val_every * 60.0:
            val_and_save("periodic")
            last_val = state["elapsed_s"]
            t_last = time.time()  # validation time is not training time
    val_and_save("final" if not stop["flag"] else "interrupted")
    log(f"done: step {state['step']}, {state['elapsed_s'] / 60:.1f} min, best mean Dice {state['best_mean_dice']:.4f} "
        f"at step {state['best_step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
