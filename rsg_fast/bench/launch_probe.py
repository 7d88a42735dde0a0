"""What one call asks of a CUDA device: device commands (kernels, copies, fills) and host synchronisations.

Issue 8 asks for about 40 launches or fewer and at most one host synchronisation per RSG
forward+backward in the generation phase (none with ``host_target``). A CPU test can only count the
ops the dispatcher sees; the GPU run counts what the device did:

- ``kernels``, ``copies``, ``fills``: the device-side activity of one call as torch.profiler (CUPTI)
  records it: each Triton or ATen kernel, each ``Memcpy ...`` and each ``Memset ...``. ``launches``
  is their sum: every command the host queued, each with its launch cost.
- ``host_syncs``: the synchronisations ``torch.cuda.set_sync_debug_mode("warn")`` reports during
  another call: torch's own (``.item()``, ``nonzero``, a blocking copy to the host), not waits inside
  the driver.

``cuda_launches(case, device)`` measures one bench case so; ``count_device_activity(events)`` is the
counting, on any sequence of profiler events.
"""
from __future__ import annotations

import contextlib
import warnings

import torch

METHOD = ("device activity of one call (torch.profiler, CUPTI): kernels + copies + fills; "
          "host_syncs: torch.cuda.set_sync_debug_mode('warn') during another call")
# what a call that recorded no device event gets instead of counts: where CUPTI cannot start (no
# permission, say), kineto only logs it and torch.profiler returns host events alone
NO_DEVICE_ACTIVITY = "torch.profiler recorded no device activity (CUPTI unavailable?)"


def count_device_activity(events) -> dict:
    """{"launches", "kernels", "copies", "fills"} of the device-side events (``device_type`` CUDA) in
    ``events`` (``torch.profiler.profile.events()``): copies are named ``Memcpy ...``, fills
    ``Memset ...``, every other device event is a kernel. Host-side events are not counted, nor the
    device-side spans kineto adds for a user-scope ``record_function`` around kernels (its
    gpu_user_annotation events, ``is_user_annotation``: ``Optimizer.step`` makes one)."""
    kernels = copies = fills = 0
    for e in events:
        if e.device_type != torch.autograd.DeviceType.CUDA or getattr(e, "is_user_annotation", False):
            continue
        name = e.name.lower()
        if name.startswith("memcpy"):
            copies += 1
        elif name.startswith("memset"):
            fills += 1
        else:
            kernels += 1
    return {"launches": kernels + copies + fills, "kernels": kernels, "copies": copies, "fills": fills}


@contextlib.contextmanager
def host_sync_messages():
    """Collects the messages of the CUDA synchronisations torch reports inside the block
    (set_sync_debug_mode "warn"); the caller's mode is restored after."""
    previous = torch.cuda.get_sync_debug_mode()
    found: list[str] = []
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield found
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    found.extend(str(w.message) for w in caught if "synchroniz" in str(w.message).lower())


def count_host_syncs(fn) -> int:
    """The CUDA synchronisations torch reports while ``fn()`` runs (``host_sync_messages``)."""
    with host_sync_messages() as found:
        fn()
    return len(found)


def cuda_launches(case, device, warmup: int = 1) -> dict:
    """``count_device_activity`` of one call of ``case`` and ``host_syncs`` of the next, after
    ``warmup`` calls (a first call may fill caches or an optimiser's state); each call after the
    previous one's gradients are freed, as the timed calls are. Without device events,
    ``launches_error`` instead of the counts."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        case.reset()
        case.fn()
    case.reset()
    torch.cuda.synchronize(device)
    # CPU activity too: the device events are then tied to the ops that queued them (and on a
    # machine without CUDA the profiler still runs, which lets the tests run this body)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        case.fn()
        torch.cuda.synchronize(device)
    counts = count_device_activity(prof.events())
    if counts["launches"] == 0:     # every case queues work: none seen is no count, not 0 launches
        counts = {"launches_error": NO_DEVICE_ACTIVITY}
    case.reset()
    torch.cuda.synchronize(device)
    counts["host_syncs"] = count_host_syncs(case.fn)
    torch.cuda.synchronize(device)
    case.reset()
    return counts
