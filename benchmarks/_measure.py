"""
Measuring helpers shared by the benchmark scripts: step times of a Trainer, the generation time of an on-policy one,
and a process's peak memory on Linux.
"""

from __future__ import annotations

import resource
import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, in `times`."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


class GenerationTimer:
    """
    Wall time of every generation call of a TRL on-policy trainer (`DistillationTrainer` and its subclasses: the
    student sampling a batch's completions, `_generate_single_turn`), in `times`, and the completion tokens each call
    sampled, in `tokens`; wraps `trainer` in place.
    """

    def __init__(self, trainer):
        self.times, self.tokens = [], []
        generate = trainer._generate_single_turn

        def timed_generate(*args, **kwargs):
            start = time.perf_counter()
            out = generate(*args, **kwargs)
            self.times.append(time.perf_counter() - start)
            self.tokens.append(sum(len(ids) for ids in out))
            return out

        trainer._generate_single_turn = timed_generate


def status_kb(field: str) -> int:
    """A memory field of /proc/self/status (`VmRSS`, `VmHWM`, ...), in kB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


class PeakMemory:
    """
    The peak resident set size reached after `start()`, above the resident size at `start()`, in MiB.

    The kernel's peak counter is reset through /proc/self/clear_refs (Linux ≥ 4.0); where that is not allowed the peak
    is `ru_maxrss`, which also counts anything before `start()` (`method` says which was used).
    """

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets VmHWM to the current RSS
            self.method = "clear_refs"
        except OSError:
            self.method = "ru_maxrss"
        self.baseline_kb = status_kb("VmRSS")

    def peak_mib(self) -> float:
        if self.method == "clear_refs":
            peak_kb = status_kb("VmHWM")
        else:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        return (peak_kb - self.baseline_kb) / 1024
