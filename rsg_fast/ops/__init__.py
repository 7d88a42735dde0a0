"""RSG's fused ops, one file each, each a ``torch.library`` custom op in the ``rsg_fast`` namespace
(``torch.ops.rsg_fast.*``) with a PyTorch path and Triton kernels (``rsg_fast.kernels``), and a
plain reference in ``rsg_fast.ops.naive``. Math: docs/ops-contract.md.

- ``center_assign(x, target, centers, linear, bias) -> (gamma, dist, row, cesc)``    Eq. 1 and Eq. 5
- ``displacement(x, index, row, table) -> v``                                         Eq. 3
- ``mv_terms(tv, v, x, tail_index, row, table, grouping) -> (new, terms)``            Eq. 4 and Eq. 6
- ``relu_tap_window_means(pre) -> S``                                                 Eq. 2 (pooled 3x3 conv)
- ``batch_plan`` / ``pair_indices``: Algorithm 1's head/tail split and pairs

Every public function takes ``backend="auto"|"torch"|"triton"`` (``rsg_fast.backend``).
Dtypes: statistics accumulate in float64 if an input is float64, else float32 (fp16/bf16 inputs
are never upcast in memory); tensor outputs keep their input's dtype. Under ``torch.autocast`` the
ops see their inputs unchanged (a pass-through autocast rule) and pick their own accumulation dtype.
"""
from rsg_fast.ops._common import EPS, GROUPINGS, acc_dtype
from rsg_fast.ops.center_assign import center_assign
from rsg_fast.ops.displacement import displacement
from rsg_fast.ops.mv_terms import mv_terms
from rsg_fast.ops.pairs import batch_plan, pair_indices
from rsg_fast.ops.tap_window_means import relu_tap_window_means

__all__ = ["center_assign", "displacement", "mv_terms", "relu_tap_window_means", "batch_plan", "pair_indices",
           "GROUPINGS", "EPS", "acc_dtype"]
