"""The full checks that a run can start, made by `run` before anything is written: those
of engine.preflight, plus a device that exists, the data loaded and a budget of at least
one batch. The loaded data is handed on to training, so it is read once.
"""

from __future__ import annotations

from pathlib import Path

from engine.config import RunConfig
from engine.errors import BadInput
from engine.preflight import check_model_known
from engine.train.budget import plan_budget
from engine.train.prepare import RunData, load_run_data, resolve_device


def check_runnable(config: RunConfig, data_root: Path, data: RunData | None = None) -> RunData:
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


def check_all_runnable(configs: list[RunConfig], data_root: Path) -> list[RunData]:
    """check_runnable for a sweep; configs that read the same data share one loaded copy."""
    loaded: dict[tuple, RunData] = {}
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
