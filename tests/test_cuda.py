"""The CUDA path (bf16 autocast, channels_last, compile): runs only where a GPU is present."""

import pytest
import torch

from engine.config import RunConfig
from engine.train.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("compile_model", [False, True])
def test_digits_trains_on_cuda(tmp_path, compile_model):
    config = RunConfig(dataset="digits", model="small_cnn", epochs=4, batch_size=64, lr=0.05,
                       crop_padding=1, device="cuda", compile=compile_model)
    summary = train(config, tmp_path / "run", data_root=tmp_path)
    assert summary["device"].startswith("cuda")
    assert summary["final_test_acc"] >= 0.9
    assert summary["samples_backprop"] == 4 * (1437 // 64) * 64


def test_cuda_resume_continues_from_the_checkpoint(tmp_path):
    config = RunConfig(dataset="digits", model="cifar_resnet18", epochs=2, batch_size=128, device="cuda")

    class Stop(Exception):
        pass

    def stop_after_first_epoch(event):
        if event["event"] == "epoch":
            raise Stop

    with pytest.raises(Stop):
        train(config, tmp_path / "run", data_root=tmp_path, on_event=stop_after_first_epoch)
    summary = train(config, tmp_path / "run", data_root=tmp_path)
    assert summary["epochs_run"] == 2 and summary["steps"] == 2 * (1437 // 128)
