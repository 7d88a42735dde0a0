"""The training epochs of a set-up run: train, evaluate, log, checkpoint, once per epoch.

``train(setup, proc, stop, progress)`` runs epochs ``setup.start_epoch`` .. ``stop - 1`` and writes the
run folder (process 0). The order of every random draw is fixed by (seed, epoch) and the restored RNG
states, so a resumed run on the CPU reproduces an uninterrupted one bit for bit.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from rsg_fast import checkpoint as ckpt
from rsg_fast.compiling import compile_with_rsg
from rsg_fast.data import DeviceBatches, LoaderOnDevice
from rsg_fast.losses import TrainRule, build_loss, paper_lr
from rsg_fast.metrics import PER_CLASS_LINE_MAX_CLASSES, MetricsLog, accuracy_summary, format_acc
from rsg_fast.train.config import TrainConfig, memory_format
from rsg_fast.train.distributed import (EpochSampler, Process, ShardSampler, all_reduce, broadcast_buffers,
                                        gather_rng, unwrap)
from rsg_fast.train.evaluation import evaluate
from rsg_fast.train.progress import RunProgress
from rsg_fast.train.run_folder import RunFolder, training_checkpoint
from rsg_fast.train.setup import TrainSetup

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}   # --amp


def train(setup: TrainSetup, proc: Process, *, stop: int, progress: bool = True) -> None:
    """Train epochs ``setup.start_epoch`` .. ``stop - 1``. Raises ``checkpoint.WriteError`` when the run
    folder cannot be written (the files written before stay intact)."""
    cfg, data, device = setup.config, setup.data, setup.device
    folder = RunFolder(cfg.out)
    model = setup.model
    if proc.world > 1:
        # Which RSG parameters get gradients depends on the phase (T only after epoch_thresh; the
        # contrastive module only before it) and on whether a local batch holds both heads and tails,
        # so DDP must look for unused parameters each step instead of waiting for their gradients.
        # device_ids=None: the loaders put the inputs on the device, and DDP with device_ids would also move
        # RSG's host_target (the labels left on the CPU on purpose) to the GPU.
        model = nn.parallel.DistributedDataParallel(model, device_ids=None, find_unused_parameters=cfg.rsg)
    step_model = compile_with_rsg(model) if cfg.compile else model   # same parameters; trains only
    sampler = EpochSampler(data.train.targets, cfg.seed, proc.rank, proc.world)
    train_loader, test_loader = _loaders(cfg, data, sampler, device, proc)
    rule = TrainRule(cfg.train_rule, data.cls_num_list, cfg.drw_epoch, cfg.cb_beta)
    criterion = build_loss(cfg.loss_type, data.cls_num_list, focal_gamma=cfg.focal_gamma,
                           ldam_max_m=cfg.ldam_max_m, ldam_s=cfg.ldam_s).to(device)
    log = MetricsLog(cfg.out, data.num_classes, resume_from_epoch=setup.start_epoch) if proc.is_main else None
    if setup.resumed is not None:
        rngs = setup.resumed["rng"]
        ckpt.set_rng_state(rngs[proc.rank] if proc.rank < len(rngs) else rngs[0])
    bar = RunProgress(proc.is_main and progress, len(train_loader), setup.start_epoch, stop, cfg.epochs)
    best_acc, best_epoch = setup.best_acc, setup.best_epoch
    saved_config = cfg.to_dict()  # the same every epoch
    try:
        for epoch in range(setup.start_epoch, stop):
            t0 = time.time()
            bar.start_epoch(epoch)
            lr = paper_lr(epoch, cfg.lr, cfg.warmup_epochs, cfg.lr_milestones, cfg.lr_factors)
            for group in setup.optimizer.param_groups:
                group["lr"] = lr
            w = rule.weights(epoch)
            criterion.weight = None if w is None else w.to(device)
            sampler.set_epoch(epoch, rule.balanced_sampling(epoch))
            sums = _train_epoch(step_model, train_loader, criterion, setup.optimizer, setup.scaler, cfg, epoch,
                                device, proc, bar)

            # The bare module: DDP's forward would broadcast buffers, a collective that processes with
            # unequal numbers of test batches would not all reach. So they are broadcast once here: every
            # process evaluates the model process 0 saves (its own statistics gave a test accuracy that
            # `rsg-fast evaluate` of the checkpoint did not reproduce).
            broadcast_buffers(unwrap(model), proc.world)
            correct_c, total_c = evaluate(unwrap(model), test_loader, data.num_classes, device, proc.world)
            record = _epoch_record(cfg, data.cls_num_list, epoch, lr, sums, correct_c, total_c, time.time() - t0)
            is_best = record["test_acc"] > best_acc
            if is_best:
                best_acc, best_epoch = record["test_acc"], epoch
            if proc.is_main:
                bar.write(MetricsLog.summary_line(record, cfg.epochs))
                if data.num_classes <= PER_CLASS_LINE_MAX_CLASSES:
                    bar.write(MetricsLog.per_class_line(record))
                log.append(record)
            rngs = gather_rng(proc.world)  # a collective: every process takes part
            if proc.is_main:
                net = unwrap(model)
                state = training_checkpoint(epoch, saved_config, net, setup.optimizer, setup.scaler,
                                            (best_acc, best_epoch), rngs)
                folder.save_epoch(state, net, is_best=is_best, acc=record["test_acc"])
    finally:
        bar.close()
        if log is not None:
            log.close()
    if proc.is_main and log.records:
        last = log.records[-1]
        # a job stopped early is not "done": its summary says where it stopped, then how to go on
        ended = "done" if stop >= cfg.epochs else "stopped early"
        print(f"{ended}: best top-1 {best_acc:.2f}% at epoch {best_epoch + 1}; last epoch top-1 "
              f"{last['test_acc']:.2f}%, many {format_acc(last['many_acc'])} medium {format_acc(last['medium_acc'])} "
              f"few {format_acc(last['few_acc'])}; run folder {cfg.out}", flush=True)
        if stop < cfg.epochs:
            print(f"stopped after {stop} of {cfg.epochs} epochs (--stop-after-epoch {stop}); to continue, give the "
                  "same flags with --resume and a later --stop-after-epoch, or none", flush=True)


def _loaders(cfg: TrainConfig, data, sampler: EpochSampler, device: torch.device, proc: Process):
    """(train, test) batches, each image batch on ``device`` and its labels on the host: ``DeviceBatches``
    (``--loader device``) or DataLoaders (``--loader workers``) through ``LoaderOnDevice``."""
    batch = cfg.batch_size // proc.world
    test_batch = max(batch, 1) * 2   # no gradients kept: twice the batch fits
    test_sampler = ShardSampler(len(data.test), proc.rank, proc.world)
    layout = memory_format(vars(cfg))
    if cfg.loader == "device":
        # the augmentation's draws follow the sampler's (seed, epoch, rank), as the order does
        train = DeviceBatches(data.train, sampler, batch, device=device, drop_last=cfg.drop_last,
                              memory_format=layout)
        test = DeviceBatches(data.test, test_sampler, test_batch, device=device, memory_format=layout)
        return train, test
    pin = device.type == "cuda"
    # persistent_workers=False: workers seeded afresh each epoch from the restored RNG, so a resumed run
    # draws the augmentation an uninterrupted one would
    train = DataLoader(data.train, batch_size=batch, sampler=sampler, num_workers=cfg.workers, pin_memory=pin,
                       persistent_workers=False, drop_last=cfg.drop_last)
    test = DataLoader(data.test, batch_size=test_batch, sampler=test_sampler, num_workers=cfg.workers,
                      pin_memory=pin)
    return LoaderOnDevice(train, device, layout), LoaderOnDevice(test, device, layout)


def _train_epoch(model, loader, criterion, optimizer, scaler: torch.amp.GradScaler, cfg: TrainConfig, epoch: int,
                 device, proc: Process, bar: RunProgress) -> dict:
    """One pass over the training data; the loss parts' means and the counts, summed over processes.
    With fp16 the scaler multiplies the loss before the backward and skips the step (lowering the
    scale) when a gradient overflowed; otherwise it passes everything through unchanged."""
    model.train()
    sums = torch.zeros(7, dtype=torch.float64, device=device)  # cls, cesc, mv, correct, seen, generated, steps
    seen = generated = step_count = 0   # host-side counts: no device copy per step
    for x, y_host in loader:   # x already on the device, in the run's memory format
        y = y_host.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(cfg.amp), enabled=cfg.amp != "off"):
            # the loader's CPU labels let RSG plan its new samples without a device-to-host sync
            logits, y_out, cesc, mv = model(x, y, epoch, host_target=y_host if y_host.device != y.device else None)
            loss_cls = criterion(logits, y_out)
            loss = loss_cls + cfg.lambda_cesc * cesc + cfg.lambda_mv * mv       # Eq. 7
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = y.shape[0]
        with torch.no_grad():   # float32 parts added into the float64 sums: 3 launches, not 6 (a cast each)
            correct = (logits[:n].argmax(dim=1) == y).sum()
            sums[:4] += torch.stack([loss_cls.float(), cesc.float(), mv.float(), correct.float()])
        seen, generated, step_count = seen + n, generated + y_out.shape[0] - n, step_count + 1
        bar.step(loss, step_count)
    sums[4], sums[5], sums[6] = seen, generated, step_count
    loss_cls, cesc, mv, correct, seen, generated, steps = all_reduce(sums, proc.world).tolist()
    steps = max(steps, 1.0)
    return {"loss_cls": loss_cls / steps, "loss_cesc": cesc / steps, "loss_mv": mv / steps, "correct": correct,
            "seen": seen, "generated": int(generated)}


def _epoch_record(cfg: TrainConfig, cls_num_list, epoch: int, lr: float, sums: dict, correct_c, total_c,
                  seconds: float) -> dict:
    """One line of metrics.jsonl (its keys and order are the file's format)."""
    acc = accuracy_summary(correct_c, total_c, cls_num_list)
    phase = ("generation" if epoch > cfg.epoch_thresh else "contrastive") if cfg.rsg else "off"
    return {"epoch": epoch, "lr": lr,
            "loss": sums["loss_cls"] + cfg.lambda_cesc * sums["loss_cesc"] + cfg.lambda_mv * sums["loss_mv"],
            "loss_cls": sums["loss_cls"], "loss_cesc": sums["loss_cesc"], "loss_mv": sums["loss_mv"],
            "train_acc": 100.0 * sums["correct"] / max(sums["seen"], 1.0),
            "test_acc": acc["top1"], "many_acc": acc["many_acc"], "medium_acc": acc["medium_acc"],
            "few_acc": acc["few_acc"],
            "n_generated": sums["generated"],
            "rsg_phase": phase,
            "epoch_time_s": seconds, "per_class_acc": acc["per_class_acc"]}
