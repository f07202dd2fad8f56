"""Models: stage splitting of keras-hub ViTs and the DMPO classifier."""

# Importing the package registers DMPOClassifier for keras.models.load_model.
from keras_dmpo.models.dmpo_classifier import DMPOClassifier  # noqa: E402,F401
from keras_dmpo.models.vit_stages import ViTStages  # noqa: E402,F401
