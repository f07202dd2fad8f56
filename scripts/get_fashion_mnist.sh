#!/usr/bin/env bash
# Makes Fashion-MNIST available offline where Debian's package can be installed.
# keras_dmpo.datasets copies the package's files into Keras' cache on first use.
if [ -d /usr/share/datasets/fashion-mnist ]; then exit 0; fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "Installing Debian's dataset-fashion-mnist (30 MB) for offline Fashion-MNIST..."
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 ||
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) ||
    echo "Could not install dataset-fashion-mnist; Keras will try to download Fashion-MNIST instead."
else
  echo "apt-get not usable here; Keras will download Fashion-MNIST on first use."
fi
exit 0
