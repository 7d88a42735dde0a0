"""rsg_fast: the Rare-class Sample Generator (Wang et al., CVPR 2021), exact and fast."""
__version__ = "0.1.0"
