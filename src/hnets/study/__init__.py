"""When does equivariance pay? The seeds x sample sizes x datasets study, as ordinary runs.

A study is a list of :class:`StudyRun` (:mod:`.plan`); each one is an ordinary training
run directory under ``runs_dir`` named ``<dataset>-<variant>-<model>-n<size>-s<seed>``,
trained by :func:`hnets.training.train` with the settings :meth:`StudyRun.train_settings`
gives (:meth:`StudyRun.argv`, made from the same settings, is its ``hnets train`` line).
:func:`run_study` trains the runs that have no ``summary.json`` yet (an interrupted one
resumes from its checkpoint), then :func:`collect_study` reads whatever runs have finished
and writes:

* ``results.csv``: one row per run (``dataset, variant, model, train_size, seed,
  epochs, params, valid_error, test_error, wall_seconds, threads``; ``threads``: of
  the process that finished the run, empty for runs from before it was recorded);
* ``summary.csv``: mean and (sample) standard deviation of ``test_error`` per
  ``dataset, model, train_size``, with the number of seeds;
* ``gap.csv``: the CNN's mean test error minus the H-Net's, per ``dataset,
  train_size`` where both models have runs, in percentage points, with its standard
  error ``sqrt(s_h^2 / n_h + s_c^2 / n_c)`` (Welch's; empty below two seeds of either);
* ``error_vs_size.png``: test error against training-set size (log x), error bars
  one standard deviation, one panel per dataset, both models; below it the gap,
  error bars one standard error;
* ``upright/``: the upright-train / rotated-test study's accuracy by the test
  image's angle (:func:`hnets.analysis.robustness_study` by stored angle), with an
  ``inputs.json`` saying what it was computed from: evaluated again only when an
  upright run finished or changed since (or the settings did);
* ``crisp.csv``: for every finished run on rotated data, accuracy on the first
  ``crisp_images`` test images as stored (rotated, bilinear) and on their unrotated
  originals turned by exact quarter turns (crisp inputs, as a user's own photo);
  computed once per run into its ``crisp.json``;
* ``results.md``: the same tables in Markdown (also returned, for printing);
* ``runs/<run name>.json``: each finished run's record (its row of ``results.csv``,
  its crisp-input accuracies, and the run's settings). The run directories hold
  checkpoints and live outside a work tree, so they can be lost with a machine; the
  records sit beside the tables (in git, for ``docs/results/study``), and a run whose
  directory is gone but whose record matches the plan counts as finished: collect
  reads the record, and ``hnets study`` and ``--status`` do not train it again.

Training length: the full size (train+valid, 12,000 images) uses the recipe's
epochs (no validation: the last epoch is kept). A smaller size trains on a seeded,
stratified subset of the train split for a fixed budget of ``small_steps``
optimizer steps (the epochs that make it up, rounded up), validates about
``validations`` times (every ``epochs // validations`` epochs and after the last),
and keeps its best validated epoch by accuracy on the 2,000 validation images; the
same rule for both models. The default 8,000 steps was chosen on validation (see
docs/study.md: 4,000 undertrained the CNN at 1,000 and 5,000 images, 16,000 gained
nothing at 1,000). The test split is read once per run, at its end.
"""

from .collect import UPRIGHT_INPUTS, collect_study
from .plan import UPRIGHT_RECIPE, StudyConfig, StudyRun, plan_study
from .records import RECORDS_DIR, read_records
from .runs import default_runs_dir, format_status, pending_runs, run_study, study_status
from .tables import RESULT_FIELDS

__all__ = [
    "StudyConfig",
    "StudyRun",
    "RESULT_FIELDS",
    "RECORDS_DIR",
    "UPRIGHT_INPUTS",
    "UPRIGHT_RECIPE",
    "plan_study",
    "run_study",
    "collect_study",
    "study_status",
    "format_status",
    "read_records",
    "pending_runs",
    "default_runs_dir",
]
