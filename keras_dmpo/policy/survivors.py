"""The loop that runs each stage on the samples still in play (numpy only).

Every early-exit path is this loop with another way of running a stage:
``EarlyExitModel.predict`` (Keras stage models), ``StagedRuntime`` (LiteRT
stage graphs, in batches or one image at a time) and ``ExitPolicy.assign``
(every exit's outputs already computed). Only the samples that have not
answered reach the next stage, which is where early exit saves its compute.
"""

import numpy as np


def route(policy, inputs, run_stage):
    """Send ``inputs`` through the stages, each sample until its exit answers.

    Args:
        policy: the ``ExitPolicy`` that decides, after each stage, which
            samples answer there.
        inputs: stage 1's inputs, an array with one row per sample.
        run_stage: ``run_stage(k, inputs) -> (probabilities, next_inputs)``
            for 0-based stage ``k``: exit k's ``(n, C)`` probabilities for
            the ``n`` rows of ``inputs``, and stage k+1's inputs for the
            same rows (None after the last stage). The loop keeps the rows
            of the samples that go on.

    Returns:
        ``(exit_index, probabilities)``: ``(N,)`` int64 0-based exit of each
        sample and ``(N, C)`` the probabilities of the exit that answered.

    Example (precomputed outputs of 2 exits for 2 samples):

    >>> from keras_dmpo.policy import ExitPolicy
    >>> outputs = np.array([[[0.9, 0.1], [0.6, 0.4]], [[0.5, 0.5], [0.3, 0.7]]])
    >>> policy = ExitPolicy("confidence", thresholds=[0.8, 0.0])
    >>> exit_index, probabilities = route(
    ...     policy, np.arange(2), lambda k, rows: (outputs[k, rows], rows))
    >>> exit_index.tolist(), probabilities.tolist()
    ([0, 1], [[0.9, 0.1], [0.3, 0.7]])
    """
    num_samples = len(inputs)
    exit_index = np.full(num_samples, policy.num_exits - 1, dtype=np.int64)
    answers = None
    alive = np.arange(num_samples)  # original rows of the samples still in play
    state = policy.start(num_samples)
    for k in range(policy.num_exits):
        probabilities, next_inputs = run_stage(k, inputs)
        probabilities = np.asarray(probabilities)
        leave, state = policy.step(k, probabilities, state)
        if leave.all():  # the rest answer here (always at the last exit)
            if answers is None:  # everyone at once: no scatter
                exit_index[:] = k
                return exit_index, probabilities
            answers[alive] = probabilities
            exit_index[alive] = k
            break
        if not leave.any():  # everyone goes on: all rows (a view), no gather
            inputs = next_inputs[:]
            continue
        if answers is None:
            answers = np.zeros((num_samples,) + probabilities.shape[1:], probabilities.dtype)
        answers[alive[leave]] = probabilities[leave]
        exit_index[alive[leave]] = k
        stay = ~leave
        alive = alive[stay]
        inputs = next_inputs[stay]
    return exit_index, answers
