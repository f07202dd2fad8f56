"""The DMPO benchmark's parts, one idea a module; ``dmpo_benchmark.py`` drives them.

- ``profiles``: what is compared (methods), on what (data sizes, backbone),
  and where the results go: one ``Profile`` per benchmark.
- ``backbones``, ``data``: the backbone preset and the data splits of a run.
- ``runs``: one training run and the record it leaves; ``latency``: its
  optional LiteRT timing.
- ``outputs``: the per-exit outputs stored beside each record (.npz).
- ``budgets``: the budget rows of a record, calibrated by ``keras_dmpo.policy``.
- ``records``: reading the records; ``recalibrate``: their budgets again from
  the stored outputs, no model.
- ``summary``: means over seeds and the claim's checks; ``report``: the
  markdown and plots built from them; ``estimate``: the full run's time.

Modules here import Keras inside the functions that train, so the report,
re-calibration and exit-policy studies run where only numpy is at hand.
"""
