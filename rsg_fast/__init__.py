"""rsg_fast: the Rare-class Sample Generator (Wang et al., CVPR 2021), exact and fast.

``RSG`` is the drop-in module (published constructor, forward and state_dict keys);
``ReferenceRSG`` is the plain PyTorch oracle it is tested against. The fused functional ops
(``center_assign``, ``displacement``, ``mv_terms``, ``relu_tap_window_means``; see ``rsg_fast.ops``)
are exported too.
"""
__version__ = "0.2.0.dev0"   # a development build after 0.1.0 (CHANGELOG: Unreleased)
__all__ = ["RSG", "ReferenceRSG", "center_assign", "displacement", "mv_terms", "relu_tap_window_means",
           "__version__"]
_OPS = ("center_assign", "displacement", "mv_terms", "relu_tap_window_means")


def __getattr__(name):
    # Imported on first use, so `import rsg_fast.data` (or the CLI's --help) does not pull in
    # triton and the kernels.
    if name == "RSG":
        from rsg_fast.module import RSG
        return RSG
    if name == "ReferenceRSG":
        from rsg_fast.reference import ReferenceRSG
        return ReferenceRSG
    if name in _OPS:
        from rsg_fast import ops
        return getattr(ops, name)
    raise AttributeError(f"module 'rsg_fast' has no attribute {name!r}")
