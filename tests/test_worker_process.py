"""The worker-process set-up every unit gets (labelgen/pipeline/worker_process.py)."""

import os
import subprocess
import sys

import pytest

from labelgen.errors import ConfigError
from labelgen.models import precision
from labelgen.models.precision import autocast, check_precision, resolve_precision

PROBE = """
import torch
from labelgen.pipeline.worker_process import prepare_worker_process, restore_buffer_reuse
torch.set_num_threads(2)  # as a training unit that ran before in the same worker leaves it
prepare_worker_process()
print(restore_buffer_reuse(), torch.get_num_threads())
"""


def probe(env_extra: dict[str, str]) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"} | env_extra
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_dask_nanny_trim_threshold_is_undone():
    """dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536, which makes every large buffer a fresh mmap."""
    assert probe({"MALLOC_TRIM_THRESHOLD_": "65536"}) == ["True", "1"]


def test_without_the_variable_the_allocator_is_left_alone():
    assert probe({}) == ["False", "1"]


def test_precision_values_are_checked():
    check_precision("bf16", "x.precision")
    with pytest.raises(ConfigError, match="export_cams.precision='fp16'; allowed: auto, bf16, fp32"):
        check_precision("fp16", "export_cams.precision")


def test_autocast_runs_matmuls_in_bf16_on_cpu():
    import torch

    a = torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert (a @ a).dtype == torch.float32


def test_auto_takes_bf16_only_where_it_is_native(monkeypatch):
    import torch

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: False)
    assert resolve_precision(cpu, "auto") == "fp32"
    assert resolve_precision(cpu, "bf16") == "bf16"  # asked for explicitly: kept, with a warning
    monkeypatch.setattr(precision, "native_bf16", lambda device_type: True)
    assert resolve_precision(cpu, "auto") == "bf16"
