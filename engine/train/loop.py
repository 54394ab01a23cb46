"""One budgeted training run: `train(config, run_dir) -> summary`.

Owns the training loop, per-epoch evaluation, compute accounting (SPEC §6) and
checkpoint/resume. Printing, the history store and seed loops live outside.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy
import torch
import torch.nn.functional as F

from engine.atomic import write_atomic
from engine.config import RunConfig
from engine.errors import BadInput
from engine.paths import CHECKPOINT_NAME, METRICS_NAME, SUMMARY_NAME, USAGE_NAME
from engine.preflight import check_model_known
from engine.train.augment import create_augmentation, per_sample_loss, score_credit
from engine.train.budget import BudgetPlan, ScheduleClock, learning_rate, plan_budget
from engine.train.data import DatasetSplits, load_dataset, split_validation
from engine.train.models import build_model, forward_flops_per_sample
from engine.train.samplers import Scorer, create_sampler


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run fails instead of reporting garbage."""


EventHandler = Callable[[dict[str, Any]], None]


@dataclass
class Accounting:
    """What the run has cost so far (SPEC §6); saved in checkpoints."""

    steps: int = 0
    samples_backprop: int = 0
    samples_forwarded_train: int = 0  # forwards of the training step itself
    samples_forwarded_scoring: int = 0  # extra no-grad forwards a sampler asked for
    time_train_s: float = 0.0
    time_eval_s: float = 0.0
    time_total_s: float = 0.0

    def samples_forwarded(self) -> int:
        return self.samples_forwarded_train + self.samples_forwarded_scoring


@dataclass
class Prepared:
    """Data on the device plus what the loop derives from it once."""

    splits: DatasetSplits
    train_images: torch.Tensor  # uint8 on the device
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None
    mean: torch.Tensor  # (1, C, 1, 1), on the 0..255 scale
    inv_std: torch.Tensor  # (1, C, 1, 1), 1 / (std * 255)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("device=cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


def load_run_data(config: RunConfig, data_root: Path) -> tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor] | None]:
    """The dataset's splits (train shrunk by the validation hold-out when asked)."""
    splits = load_dataset(
        config.dataset,
        data_root,
        download=config.download,
        image_size=config.image_size or None,
        data_path=Path(config.data_path) if config.data_path else None,
        split_seed=config.split_seed,
    )
    if config.val_size:
        return split_validation(splits, config.val_size, config.split_seed)
    return splits, None


def check_runnable(
    config: RunConfig,
    data_root: Path,
    data: tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor] | None] | None = None,
) -> tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor] | None]:
    """Fail with BadInput now, before anything is written, if the run cannot start:
    unknown model, no CUDA, missing dataset files, a budget under one batch. Returns the
    data (loaded here unless already given)."""
    resolve_device(config.device)
    check_model_known(config.model)
    data = data if data is not None else load_run_data(config, data_root)
    try:
        plan_budget(config, data[0].train_images.shape[0])
    except ValueError as error:
        raise BadInput(str(error)) from error
    return data


def check_all_runnable(
    configs: list[RunConfig], data_root: Path
) -> list[tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor] | None]]:
    """check_runnable for a sweep; configs that read the same data share one loaded copy."""
    loaded: dict[tuple, tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor] | None]] = {}
    result = []
    for config in configs:
        key = (config.dataset, config.data_path, config.image_size, config.download,
               config.val_size, config.split_seed)
        if key not in loaded:
            loaded[key] = check_runnable(config, data_root)
        else:
            check_runnable(config, data_root, data=loaded[key])
        result.append(loaded[key])
    return result


def prepare(splits: DatasetSplits, val: tuple[torch.Tensor, torch.Tensor] | None, device: torch.device) -> Prepared:
    channels = splits.train_images.shape[1]
    mean = torch.tensor(splits.mean, device=device).reshape(1, channels, 1, 1) * 255.0
    # A constant channel has std 0; one grey level keeps the division finite.
    std = torch.tensor(splits.std, device=device).reshape(1, channels, 1, 1).clamp_min(1 / 255) * 255.0
    return Prepared(
        splits=splits,
        train_images=splits.train_images.to(device),
        train_labels=splits.train_labels.to(device),
        test_images=splits.test_images.to(device),
        test_labels=splits.test_labels.to(device),
        val=None if val is None else (val[0].to(device), val[1].to(device)),
        mean=mean,
        inv_std=1.0 / std,
    )


def usage_entropy(usage: torch.Tensor) -> float:
    """H(c) = -sum c_i/C ln(c_i/C) over samples with c_i > 0 (ln N when usage is uniform)."""
    total = usage.sum()
    if total == 0:
        return 0.0
    share = usage[usage > 0].double() / total
    return float(-(share * share.log()).sum())


def train(
    config: RunConfig,
    run_dir: Path,
    *,
    data_root: Path,
    on_event: EventHandler | None = None,
    data: tuple[DatasetSplits, tuple[torch.Tensor, torch.Tensor] | None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run in `run_dir` and return its summary.

    A checkpoint is written after every epoch; calling train again on the same run_dir
    continues from it and, on CPU, ends bit-identical to an uninterrupted run.
    """
    emit = on_event or (lambda event: None)
    run_dir.mkdir(parents=True, exist_ok=True)
    wall_start = time.perf_counter()
    device = resolve_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)

    # 1. Data: uint8 on the device, normalised per batch, never re-decoded per epoch.
    splits, val = data if data is not None else load_run_data(config, data_root)
    prepared = prepare(splits, val, device)
    num_train = prepared.train_images.shape[0]
    plan = plan_budget(config, num_train)

    # 2. Model and optimiser. One seed drives init (global RNG), sampling and augmentation
    #    (the run's generator); weight decay applies to every parameter (SPEC §2).
    torch.manual_seed(config.seed)
    input_shape = tuple(prepared.train_images.shape[1:])
    model = build_model(config.model, num_classes=splits.num_classes, in_chans=input_shape[0]).to(device)
    flops_forward = forward_flops_per_sample(model, input_shape)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    forward_model = torch.compile(model) if (config.compile and cuda) else model
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=False,
    )
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    augmentation = create_augmentation(config.augmentation, config, flip=splits.flip)
    sampler = create_sampler(config.sampler, num_train, plan, config.batch_size, generator, config)
    clock = ScheduleClock.for_plan(plan)
    usage = torch.zeros(num_train, dtype=torch.long, device=device)

    def gather(indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # index_select is much faster than [] for uint8 image batches on the CPU
        return (prepared.train_images.index_select(0, indices),
                prepared.train_labels.index_select(0, indices))

    def normalise(images: torch.Tensor) -> torch.Tensor:
        inputs = (images.float() - prepared.mean) * prepared.inv_std
        return inputs.contiguous(memory_format=torch.channels_last) if cuda else inputs

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            return forward_model(inputs)

    def scoring_forward(indices: torch.Tensor, train_mode: bool) -> tuple[torch.Tensor, ...]:
        # Candidates are scored on their views (per-image augmentation, no mixing: a mixed
        # image would carry other samples' labels); the chosen ones train on these views.
        was_training = model.training
        model.train(train_mode)
        # On a CPU, training-batch-sized pieces stay in cache and augment faster than one
        # big batch (measured: ub's 3x presample); a GPU prefers one launch.
        pieces = [indices] if cuda else indices.split(config.batch_size)
        logits, labels, views = [], [], []
        with torch.no_grad():
            for piece in pieces:
                images, piece_labels = gather(piece)
                views.append(augmentation.views(images, generator))
                logits.append(forward(normalise(views[-1])).float())
                labels.append(piece_labels)
        model.train(was_training)
        return torch.cat(logits), torch.cat(labels), torch.cat(views)

    scorer = Scorer(scoring_forward)

    # 3. Resume: everything that shapes the rest of the run comes back from the checkpoint.
    accounting = Accounting()
    history: list[dict[str, Any]] = []
    checkpoint_path = run_dir / CHECKPOINT_NAME
    start_epoch = 0
    if checkpoint_path.exists():
        # Load on the CPU: generator states must stay CPU byte tensors; the rest is copied over.
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        if "clock" in state:  # checkpoints of older versions re-planned nothing
            clock.load_state_dict(state["clock"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if cuda and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        usage.copy_(state["usage"])
        accounting = Accounting(**state["accounting"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        scorer.forwarded = accounting.samples_forwarded_scoring
        _write_metrics(run_dir, history)  # drop epoch lines written after the checkpoint
        emit({"event": "resume", "epoch": start_epoch, "step": accounting.steps})
    elif (run_dir / METRICS_NAME).exists():
        (run_dir / METRICS_NAME).unlink()

    emit({"event": "start", "plan": plan.to_dict(), "device": str(device),
          "flops_forward_per_sample": flops_forward, "epoch": start_epoch})
    step = accounting.steps
    shortfall: str | None = None  # why the run spent less than its planned steps, if it did
    progress_every = max(1, plan.steps_per_epoch // 20)
    ones = torch.ones(config.batch_size, dtype=torch.long, device=device)

    epoch = start_epoch
    # A sampler that spends its budget at its own pace (sb) may need epochs past the plan.
    while epoch < plan.epochs or (sampler.runs_until_spent and step < plan.total_steps):
        model.train()
        loss_sum = torch.zeros((), device=device)
        weight_sums = torch.zeros(2, device=device)  # sum and sum of squares of loss weights
        unweighted = 0  # samples of batches without weights (weight 1)
        epoch_backprop = 0
        epoch_start = time.perf_counter()
        batches = sampler.epoch_batches(epoch, scorer)
        clock.replan(step, sampler.expected_total_steps(step))
        for batch in batches:
            # 4. The step: gather uint8 samples on the device, draw each one's view (unless
            #    the sampler scored views already), mix, normalise, forward, per-sample loss
            #    (weighted if the sampler says so), backward, step.
            #    No host sync here: counters are Python ints from shapes, sums stay on device.
            step += 1
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(clock.position(step), plan, config)
            if batch.views is None:
                images, labels = gather(batch.indices)
                views = augmentation.views(images, generator)
            else:
                views, labels = batch.views, prepared.train_labels.index_select(0, batch.indices)
            augmented = augmentation.mix(views, generator)
            logits = forward(normalise(augmented.images)).float()  # loss in fp32 under bf16 autocast
            losses = per_sample_loss(logits, labels, augmented)
            loss = losses.mean() if batch.weights is None else (losses * batch.weights).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            size = batch.indices.shape[0]
            epoch_backprop += size
            loss_sum += losses.detach().sum()
            usage.index_add_(0, batch.indices, ones[:size])
            if batch.weights is None:
                unweighted += size
            else:
                weight_sums += torch.stack((batch.weights.sum(), batch.weights.square().sum()))
            if sampler.needs_scores:
                sampler.observe(score_credit(batch.indices, logits, labels, augmented, losses,
                                             faithful=config.fidelity == "faithful"))
            if step % progress_every == 0:
                emit({"event": "step", "epoch": epoch + 1, "step": step, "total_steps": plan.total_steps})
        if epoch_backprop == 0:
            # The sampler has spent its budget (sb), or found nothing worth a step in a
            # whole pass: no empty epochs in the record.
            if step < plan.total_steps:
                shortfall = f"the sampler chose no batch in epoch {epoch + 1} before spending its budget"
            break
        if cuda:
            torch.cuda.synchronize()  # honest timing: wait for the queued kernels
        accounting.time_train_s += time.perf_counter() - epoch_start
        accounting.steps = step
        accounting.samples_backprop += epoch_backprop
        accounting.samples_forwarded_train += epoch_backprop
        accounting.samples_forwarded_scoring = scorer.forwarded

        # 5. Evaluate on test (and validation) after every epoch.
        eval_start = time.perf_counter()
        test_acc, test_loss = evaluate(model, forward, normalise, prepared.test_images,
                                       prepared.test_labels, config.test_batch_size)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": learning_rate(clock.position(max(step, 1)), plan, config),  # of the epoch's last step
            "train_loss": float(loss_sum) / max(1, epoch_backprop),
            "test_acc": test_acc,
            "test_loss": test_loss,
        }
        if prepared.val is not None:
            record["val_acc"], record["val_loss"] = evaluate(
                model, forward, normalise, prepared.val[0], prepared.val[1], config.test_batch_size)
        accounting.time_eval_s += time.perf_counter() - eval_start
        epoch_time = time.perf_counter() - epoch_start
        weight_mean, weight_std = _weight_stats(weight_sums, unweighted, epoch_backprop)
        record.update(
            loss_weight_mean=weight_mean,
            loss_weight_std=weight_std,
            **sampler.diagnostics(),
            samples_backprop=accounting.samples_backprop,
            samples_forwarded=accounting.samples_forwarded(),
            distinct_seen=int((usage > 0).sum()),
            usage_entropy=usage_entropy(usage),
            time_train_s=accounting.time_train_s,
            time_eval_s=accounting.time_eval_s,
            images_per_s=epoch_backprop / max(epoch_time, 1e-9),
        )
        if not math.isfinite(record["train_loss"]):
            raise TrainingDiverged(f"training loss is {record['train_loss']} in epoch {epoch + 1}; "
                                   "lower lr or check the data")
        history.append(record)

        # 6. Checkpoint first, then the metrics line: a crash between the two loses nothing,
        #    since resume rewrites metrics.jsonl from the checkpoint's history.
        accounting.time_total_s += time.perf_counter() - wall_start
        wall_start = time.perf_counter()
        save_checkpoint(checkpoint_path, {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": sampler.state_dict(),
            "clock": clock.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(device)} if cuda else {}),
            "usage": usage,
            "accounting": vars(accounting).copy(),
            "history": history,
            "epoch": epoch + 1,
        })
        _append_metrics(run_dir, record)
        emit({"event": "epoch", "total_epochs": plan.epochs, "total_steps": plan.total_steps, **record})
        epoch += 1

    accounting.time_total_s += time.perf_counter() - wall_start
    if accounting.steps < plan.total_steps and shortfall is None:
        shortfall = sampler.shortfall_reason or "the sampler ran out of epochs before spending its budget"
    summary = summarise(config, plan, accounting, history, flops_forward, device, shortfall)
    _save_usage(usage, run_dir / USAGE_NAME)
    write_atomic(run_dir / SUMMARY_NAME, json.dumps(summary, indent=2))
    emit({"event": "done", "summary": summary})
    return summary


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    normalise: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
) -> tuple[float, float]:
    """Accuracy and mean loss, accumulated on the device with one host sync at the end."""
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=images.device)
    loss_sum = torch.zeros((), device=images.device)
    for start in range(0, images.shape[0], batch_size):
        logits = forward(normalise(images[start : start + batch_size])).float()
        target = labels[start : start + batch_size]
        correct += (logits.argmax(1) == target).sum()
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
    model.train(was_training)
    count = images.shape[0]
    return int(correct) / count, float(loss_sum) / count


def summarise(
    config: RunConfig,
    plan: BudgetPlan,
    accounting: Accounting,
    history: list[dict[str, Any]],
    flops_forward: int,
    device: torch.device,
    shortfall: str | None = None,
) -> dict[str, Any]:
    """The run's outcome and cost, every accuracy labelled by how it was chosen.

    `shortfall`: why the run took fewer than its planned steps (recorded only then).
    """
    # backward costs about twice the forward; scoring forwards cost one forward each
    flops_train = (3 * flops_forward * accounting.samples_backprop
                   + flops_forward * accounting.samples_forwarded_scoring)
    # The nominal full-budget unif-sgd run of this config: every nominal step backpropagates
    # a full batch and nothing else is forwarded.
    flops_nominal = 3 * flops_forward * plan.nominal_steps * config.batch_size
    last = history[-1]
    best = max(history, key=lambda record: record["test_acc"])
    summary: dict[str, Any] = {
        "final_test_acc": last["test_acc"],  # after the last epoch: the number to report
        "final_test_loss": last["test_loss"],
        "best_test_acc": best["test_acc"],  # oracle: epoch picked on the test set itself
        "best_test_epoch": best["epoch"],
        "epochs_run": len(history),
        "steps": accounting.steps,
        "samples_backprop": accounting.samples_backprop,
        "samples_forwarded": accounting.samples_forwarded(),
        "samples_forwarded_scoring": accounting.samples_forwarded_scoring,
        "flops_forward_per_sample": flops_forward,
        "flops_train": flops_train,
        "time_train_s": accounting.time_train_s,
        "time_eval_s": accounting.time_eval_s,
        "time_overhead_s": max(0.0, accounting.time_total_s - accounting.time_train_s - accounting.time_eval_s),
        "time_total_s": accounting.time_total_s,
        "images_per_s": accounting.samples_backprop / max(accounting.time_train_s, 1e-9),
        "budget_used": accounting.steps / plan.nominal_steps,  # fraction of the nominal steps
        "budget_planned": plan.total_steps / plan.nominal_steps,
        "flops_budget_used": flops_train / flops_nominal,  # fraction of the nominal compute
        "plan": plan.to_dict(),
        "device": str(device),
        "fidelity": config.fidelity,
        "distinct_seen": last["distinct_seen"],
        "usage_entropy": last["usage_entropy"],  # H(c) of the per-sample usage counts
    }
    if shortfall is not None:
        summary["budget_unspent_reason"] = shortfall
    if "val_acc" in last:
        best_val = max(history, key=lambda record: record["val_acc"])
        summary.update(
            final_val_acc=last["val_acc"],
            best_val_acc=best_val["val_acc"],
            best_val_epoch=best_val["epoch"],
            test_acc_at_best_val=best_val["test_acc"],  # model selection without the test set
        )
    return summary


def _weight_stats(sums: torch.Tensor, unweighted: int, count: int) -> tuple[float, float]:
    """Mean and standard deviation of the per-sample loss weights of an epoch."""
    if count == 0:
        return 1.0, 0.0
    total, squares = (value + unweighted for value in sums.tolist())
    mean = total / count
    return mean, math.sqrt(max(0.0, squares / count - mean * mean))


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise in memory, then write atomically: a crash never leaves half a checkpoint,
    and a full disk surfaces as the OSError it is (torch's own file writer reports it as
    an opaque "unexpected pos" RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getbuffer())


def _save_usage(usage: torch.Tensor, path: Path) -> None:
    write_atomic(path, lambda handle: numpy.save(handle, usage.cpu().numpy().astype("int64")))


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    write_atomic(run_dir / METRICS_NAME, "".join(json.dumps(record) + "\n" for record in history))


def _append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_NAME, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")

