"""rsg_fast: the Rare-class Sample Generator (Wang et al., CVPR 2021), exact and fast.

``RSG`` is the drop-in module (published constructor, forward and state_dict keys);
``ReferenceRSG`` is the plain PyTorch oracle it is tested against.
"""
__version__ = "0.1.0"
__all__ = ["RSG", "ReferenceRSG", "__version__"]


def __getattr__(name):
    # Imported on first use, so `import rsg_fast.data` (or the CLI's --help) does not pull in
    # triton and the kernels.
    if name == "RSG":
        from rsg_fast.module import RSG
        return RSG
    if name == "ReferenceRSG":
        from rsg_fast.reference import ReferenceRSG
        return ReferenceRSG
    raise AttributeError(f"module 'rsg_fast' has no attribute {name!r}")
