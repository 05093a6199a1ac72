"""Peak memory of a step: the optimizer's state and next to nothing else.

Each case runs in a fresh process (``memory_worker.py``), which resets Linux's peak
resident set size just before building the optimizer and reports how far it rose
over three steps. The first step allocates the state, so the rise is the state plus
whatever the steps allocated on top of it.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("memory_worker.py")

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)"
)


def _measure(optimizer: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(WORKER), optimizer], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _excess(m: dict) -> tuple[int, int]:
    """(bytes the steps held beyond the state, 1% of params + grads + state)."""
    return m["rise"] - m["state"], (m["params"] + m["grads"] + m["state"]) // 100


# A process each (several seconds): the other algorithms run with -m slow.
@pytest.mark.parametrize(
    "optimizer",
    ["adamkit.Adam", "adamkit.Adam-bf16-state", "adamkit.Adam-int8-state"]
    + [pytest.param(name, marks=pytest.mark.slow)
       for name in ("adamkit.AdamW-amsgrad", "adamkit.SGD-momentum", "adamkit.Adagrad", "adamkit.Yogi")],
)
def test_fused_step_peak_stays_within_one_percent_of_model_and_state(optimizer):
    m = _measure(optimizer)
    excess, allowed = _excess(m)
    assert m["rise"] >= 0.99 * m["state"], m  # the state is resident, so the measurement sees it
    assert excess <= allowed, f"steps held {excess / 2**20:.1f} MiB beyond the state; allowed {allowed / 2**20:.1f}"


def test_measurement_catches_a_step_that_allocates_like_the_model():
    excess, allowed = _excess(_measure("torch.optim.Adam-foreach"))
    assert excess > 10 * allowed


def test_eager_step_allocates_chunks_not_whole_tensors():
    """foreach=False keeps torch's for-loop order, but its temporaries are chunk-sized
    (``adamkit.kernels.eager.CHUNK_ELEMENTS``), not the size of each parameter as in torch."""
    ours, torchs = _measure("adamkit.Adam-eager"), _measure("torch.optim.Adam-for-loop")
    assert _excess(ours)[0] < ours["largest_param"]  # less than one parameter-sized temporary
    assert _excess(torchs)[0] > torchs["largest_param"]
