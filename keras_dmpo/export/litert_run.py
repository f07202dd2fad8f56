"""Run a TFLite flatbuffer with LiteRT (ai_edge_litert), numpy only."""

import numpy as np


def make_interpreter(model_content=None, model_path=None, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(
        model_content=model_content, model_path=model_path, num_threads=num_threads
    )
    interpreter.allocate_tensors()
    return interpreter


def run_signature(interpreter, inputs):
    """Run the default signature with a dict or list of input arrays.

    Returns a dict output name -> numpy array. A single positional input can
    be given as an array.
    """
    runner = interpreter.get_signature_runner()
    details = interpreter.get_signature_list()
    key = next(iter(details))
    input_names = details[key]["inputs"]
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if not isinstance(inputs, dict):
        inputs = dict(zip(input_names, inputs))
    return runner(**{k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()})
