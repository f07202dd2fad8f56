"""A Keras callback timing the training steps (wall and process CPU time)."""

import time


def StepTimer(skip=3):
    """Keras callback: wall time of the train steps after the first ``skip``
    of the run (those include compilation), for the steady per-image time."""
    import keras

    class _StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.skip = skip
            self.steps = 0
            self.first_seconds = 0.0
            self.steady_seconds = 0.0
            self.steady_steps = 0
            # CPU seconds of this process (all threads): independent of how
            # loaded the machine is, unlike the wall time.
            self.steady_cpu_seconds = 0.0
            self._start = None
            self._cpu_start = None

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()
            self._cpu_start = time.process_time()

        def on_train_batch_end(self, batch, logs=None):
            elapsed = time.perf_counter() - self._start
            cpu = time.process_time() - self._cpu_start
            if self.steps < self.skip:
                self.first_seconds += elapsed
            else:
                self.steady_seconds += elapsed
                self.steady_cpu_seconds += cpu
                self.steady_steps += 1
            self.steps += 1

    return _StepTimer()
