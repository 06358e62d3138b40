"""Evaluate, honestly, what hybrid test-time adaptation buys (`python -m eaml_ssm evaluate`).

Every (family, seed) is an independent unit: its own training tasks and its own test tasks
(disjoint task-seed ranges, `evaluate.seeds.unit_seeds`). Per unit: collect training-range tasks
into the store, meta-train the SSM (second-order MAML with learned step sizes; first-order,
softplus-step and jointly trained models for the ablations), then run one whole stream per
split of 5 test tasks A -> B -> ... (`heldout`: parameter bands inside the training range;
`ood`: every dynamics-setting quantity outside its training range,
`dynamics_ood.draw_dynamics_ood`),
adapting every l = 16 steps on the latest window and scoring the next one, switch windows
included (`stream_scoring`). Every method starts from the same weights, step sizes and step
count.

Metrics (nMSE = MSE / store variance of the target, per dimension, averaged):
  new          mean nMSE over every scored window of the whole stream
  switch       mean nMSE over the first windows after each task switch
  recovery     windows after a switch until the error is within 10 % of its settled value
  F train      forgetting on meta-training tasks: retention after the stream minus at theta*,
               0-shot and few-shot (adapt a fork on a held-out window, score the next)
  F A          the same for task A, against the weights right after task A
  diverged     runs with a window error or final 0-shot retention above 10 or non-finite
References (`references.py`): identity, least squares on the task's whole past, ridge toward a
global fit, and the jointly trained model without adaptation (`J_none`). Claims are paired per
seed (`stats.paired`, `stats.ratio`) against the best reference, and each normalized hybrid
against continual w = 0 at its effective step (`cont_w0_m<w>`).

Profiles: `quick` (3 seeds; Pendulum core methods, CartPole sanity set) and `full` (5 seeds,
every method). `--rerender RUN_DIR` rebuilds tables and plots from saved results;
`--publish DIR` commits a compact results.json under docs/results and renders the marked
blocks of README.md and docs/evaluation.md from it.
"""

# The package, one concept per module (docs/evaluation.md has the protocol):
#   methods   the method grid: keys, display labels, levels, matched controls
#   profiles  run sizes (quick, full) and their command-line overrides
#   seeds     each unit's disjoint task-seed ranges
#   joint     the jointly trained (non-meta) baseline
#   models    one unit's trained weights, cached per variant; stores of a method's own
#   unit      one (family, seed) unit: probes, every method on the whole streams
#   aggregate seed means and intervals per row; claims: paired claims, controls, targets
#   tables    markdown tables; report: results.md, targets text, the docs' blocks
#   plots     Pareto fronts and error curves; results: render, rerender, publish
#   cli       the command's flags and a run of a profile

from eaml_ssm.evaluate.aggregate import aggregate
from eaml_ssm.evaluate.claims import effects, targets
from eaml_ssm.evaluate.cli import add_arguments, run
from eaml_ssm.evaluate.joint import train_joint
from eaml_ssm.evaluate.methods import (
    HYBRID_WEIGHTS,
    LEVELS,
    PREREGISTERED,
    STEP_VARIANTS,
    ZERO_SHOT,
    Method,
    live_replay_rows,
    matched_control_name,
    method_grid,
)
from eaml_ssm.evaluate.plots import pareto_series
from eaml_ssm.evaluate.profiles import PROFILES, Profile, resolve_profile
from eaml_ssm.evaluate.report import report
from eaml_ssm.evaluate.results import DOC_FILES, publish, rerender
from eaml_ssm.evaluate.tables import method_table
from eaml_ssm.evaluate.trained import negative_share, step_size_variant
from eaml_ssm.evaluate.unit import (
    DIVERGED,
    Probes,
    Unit,
    evaluate_unit,
    is_diverged,
    make_probes,
    run_method,
    unit_config,
)
from eaml_ssm.method_names import LABELS, REFERENCE, label

__all__ = [
    "DIVERGED",
    "DOC_FILES",
    "HYBRID_WEIGHTS",
    "LABELS",
    "LEVELS",
    "PREREGISTERED",
    "PROFILES",
    "REFERENCE",
    "STEP_VARIANTS",
    "ZERO_SHOT",
    "Method",
    "Probes",
    "Profile",
    "Unit",
    "add_arguments",
    "aggregate",
    "effects",
    "evaluate_unit",
    "is_diverged",
    "label",
    "live_replay_rows",
    "make_probes",
    "matched_control_name",
    "method_grid",
    "method_table",
    "negative_share",
    "pareto_series",
    "publish",
    "report",
    "rerender",
    "resolve_profile",
    "run",
    "run_method",
    "step_size_variant",
    "targets",
    "train_joint",
    "unit_config",
]
