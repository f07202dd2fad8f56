"""DMPOClassifier: a frozen keras-hub ViT with DMPO multi-stage predictors."""

import contextlib
import warnings

import keras
import numpy as np
from keras import ops

from keras_dmpo import layer_defaults
from keras_dmpo.inputs import check_images, check_labels, first_batch
from keras_dmpo.layers import BypassAdapter, CovarianceExitHead, LinearExitHead, ParallelAdapter
from keras_dmpo.models import losses, stage_models
from keras_dmpo.models.options import (
    PEFT_METHODS,
    freeze_backbone,
    load_preset_backbone,
    resolve_covariance_exits,
    resolve_input_normalization,
)
from keras_dmpo.models.stage_plan import StagePlan
from keras_dmpo.models.vit_stages import ViTStages
from keras_dmpo.stream_checks import checked_stream, reraise_bad_batch
from keras_dmpo.training.loss_weights import validate_loss_weights


@keras.saving.register_keras_serializable(package="keras_dmpo")
class DMPOClassifier(keras.Model):
    """Early-exit image classifier tuned with DMPO on a frozen keras-hub ViT.

    The backbone is frozen. Each block gets a trainable ``ParallelAdapter``
    (or LoRA through keras-hub's ``enable_lora``); each exit gets a predictor
    that reads the tokens after its block. Early predictors read them through
    a ``BypassAdapter`` (so their features do not have to be the trunk's) and
    use a second-order ``CovarianceExitHead``; the deep ones a
    ``LinearExitHead``. The outputs are the logits of every exit, a dict
    ``{"exit_1": ..., "exit_K": ...}``.

    Training minimises ``sum_k w_k * CE(y, logits_k)`` where ``w`` is the
    model-owned, non-trainable variable ``exit_loss_weights``, which a
    ``PhaseCallback`` switches during ``fit`` (phase 1 deep-weighted, phase 2
    early-weighted, optional self-distillation from the last exit).

    Plain multi-exit tuning is the same class with the DMPO parts off:
    ``use_bypass=False, covariance_exits="none"`` and uniform weights.

    Mixed precision: build the backbone and the model under
    ``keras.mixed_precision.set_dtype_policy("mixed_bfloat16")`` (all three
    backends) or ``"mixed_float16"`` (TensorFlow and torch; JAX on a GPU only:
    on CPU, XLA cannot differentiate the backbone's float16 attention, "The
    precision 'F16_F16_F32' is not supported by dot_general on CPU"). The
    blocks, trunk adapters and bypasses then compute in bfloat16 / float16
    with float32 variables; the exit heads (covariance, Newton-Schulz root,
    linear) compute in float32, so every output logit and the loss are
    float32. ``compile`` wraps the optimizer in a ``LossScaleOptimizer`` under
    ``mixed_float16``. The exports run on a float32 copy (``float32_copy``).

    Args:
        backbone: a ``keras_hub.models.ViTBackbone`` (or a keras-hub ViT image
            classifier; its backbone is used). It is frozen.
        num_classes: int >= 2.
        exits: increasing 1-based block numbers; the last block is added when
            missing. ``None``: every block for <= 8 blocks, else ~8 evenly
            spaced ones.
        covariance_exits: ``"early"`` (exits in the first half of the depth,
            default), ``"all"`` (every exit but the last), ``"none"`` or a list
            of exit block numbers (not the last one).
        use_bypass: bypass adapters on every exit but the last.
        peft: trunk tuning: ``"adapter"`` (parallel adapters, default),
            ``"lora"`` (keras-hub ``enable_lora``: LoRA factors on the attention
            query/value projections, whose biases also train) or ``None``
            (heads only).
        adapter_dim: bottleneck of the trunk adapters.
        adapter_scale: their output scale.
        lora_rank: rank for ``peft="lora"``.
        bypass_dim: bottleneck of the bypass adapters.
        covariance_dim: reduced dimension ``d`` of the covariance heads.
        covariance_iterations: Newton-Schulz iterations.
        head_dropout: dropout before each classifier.
        label_smoothing: label smoothing of the cross-entropy.
        loss_weights: initial per-exit loss weights (default uniform ones);
            a ``PhaseCallback`` overrides them during ``fit``.
        input_normalization: None (images go to the backbone as given),
            ``"imagenet"`` (``(x - mean) / std`` with ImageNet statistics, for
            images in [0, 1]; what DINOv2 expects) or
            ``{"mean": [...], "std": [...]}``. It is part of the model (and
            of stage 1 of the exported graphs), so callers always pass
            images in [0, 1].

    Example (the shipped tiny preset; random images stand in for a data set):

    >>> from keras_dmpo import PhaseCallback, PhaseSchedule, tuning_optimizer
    >>> model = DMPOClassifier.from_preset("dmpo_vit_tiny", num_classes=3, exits=[2, 4, 8])
    >>> x = np.random.rand(16, 28, 28, 3).astype("float32")
    >>> y = np.random.randint(0, 3, size=16)
    >>> # AdamW, one epoch of warm-up to 6e-3, then cosine decay (the recipe)
    >>> model.compile(optimizer=tuning_optimizer(train_images=len(x), epochs=2, batch_size=8))
    >>> history = model.fit(x, y, epochs=2, batch_size=8, verbose=0,
    ...                     callbacks=[PhaseCallback(PhaseSchedule(), verbose=0)])
    >>> logits = model.predict(x, verbose=0)
    >>> {name: tuple(value.shape) for name, value in logits.items()}
    {'exit_1': (16, 3), 'exit_2': (16, 3), 'exit_3': (16, 3)}
    """

    def __init__(
        self,
        backbone,
        num_classes,
        exits=None,
        covariance_exits="early",
        use_bypass=True,
        peft="adapter",
        adapter_dim=layer_defaults.ADAPTER_DIM,
        adapter_scale=layer_defaults.ADAPTER_SCALE,
        lora_rank=layer_defaults.LORA_RANK,
        bypass_dim=layer_defaults.BYPASS_DIM,
        covariance_dim=layer_defaults.COVARIANCE_DIM,
        covariance_iterations=layer_defaults.COVARIANCE_ITERATIONS,
        head_dropout=0.0,
        label_smoothing=0.0,
        loss_weights=None,
        input_normalization=None,
        **kwargs,
    ):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"`num_classes` must be an integer >= 2; got {num_classes!r}.")
        if peft not in PEFT_METHODS:
            raise ValueError(f"`peft` must be one of {PEFT_METHODS}; got {peft!r}.")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1); got {label_smoothing!r}.")
        stages = ViTStages(backbone, exits)
        backbone = stages.backbone
        normalization = resolve_input_normalization(input_normalization, stages.image_shape[-1])
        num_exits = len(stages.exits)
        covariance_positions = resolve_covariance_exits(covariance_exits, stages.exits, stages.num_layers)
        if covariance_positions and covariance_dim > stages.hidden_dim:
            raise ValueError(
                f"`covariance_dim`={covariance_dim} is larger than the backbone width {stages.hidden_dim}."
            )
        freeze_backbone(backbone, peft, lora_rank)

        # === Layers ===
        trunk_adapters = []
        if peft == "adapter":
            trunk_adapters = [
                ParallelAdapter(adapter_dim, scale=adapter_scale, name=f"block_{i + 1}_adapter")
                for i in range(stages.num_layers)
            ]
        layout = dict(num_prefix_tokens=stages.num_prefix_tokens)
        bypasses = [
            BypassAdapter(bypass_dim, grid_shape=stages.grid_shape, name=f"exit_{k + 1}_bypass", **layout)
            if use_bypass and k < num_exits - 1
            else None
            for k in range(num_exits)
        ]
        heads = []
        for k in range(num_exits):
            if k in covariance_positions:
                head = CovarianceExitHead(
                    num_classes,
                    covariance_dim=covariance_dim,
                    iterations=covariance_iterations,
                    dropout=head_dropout,
                    name=f"exit_{k + 1}_head",
                    **layout,
                )
            else:
                # The last exit's tokens already went through the backbone's
                # final LayerNorm.
                head = LinearExitHead(
                    num_classes,
                    use_layer_norm=k < num_exits - 1,
                    dropout=head_dropout,
                    name=f"exit_{k + 1}_head",
                    **layout,
                )
            heads.append(head)

        # === Functional model ===
        plan = StagePlan(stages, trunk_adapters, bypasses, heads, normalization)
        self._plan = plan
        self.trunk_adapters = trunk_adapters
        self.exit_heads = heads
        self.exit_bypasses = [b for b in bypasses if b is not None]
        images = keras.Input(shape=stages.image_shape, name="images")
        outputs = {f"exit_{k + 1}": logits for k, logits in enumerate(plan(images))}
        super().__init__(inputs=images, outputs=outputs, **kwargs)

        # === Config ===
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.exits = stages.exits
        self.covariance_exits = covariance_exits
        self.covariance_positions = covariance_positions
        self.use_bypass = bool(use_bypass)
        self.peft = peft
        self.adapter_dim = adapter_dim
        self.adapter_scale = adapter_scale
        self.lora_rank = lora_rank
        self.bypass_dim = bypass_dim
        self.covariance_dim = covariance_dim
        self.covariance_iterations = covariance_iterations
        self.head_dropout = head_dropout
        self.label_smoothing = float(label_smoothing)
        self.input_normalization = input_normalization
        initial = (
            np.ones(num_exits, "float32")
            if loss_weights is None
            else validate_loss_weights(loss_weights, num_exits, "loss_weights")
        )
        self.initial_loss_weights = [float(w) for w in initial]
        # Model-owned and non-trainable: a callback can change it between
        # steps on every backend without a retrace.
        self.exit_loss_weights = keras.Variable(
            initial, trainable=False, name="exit_loss_weights", dtype="float32"
        )
        self.distill_weight = keras.Variable(0.0, trainable=False, name="distill_weight", dtype="float32")
        self.distill_temperature = keras.Variable(
            1.0, trainable=False, name="distill_temperature", dtype="float32"
        )
        self.exit_loss_trackers = [keras.metrics.Mean(name=f"exit_{k + 1}_loss") for k in range(num_exits)]
        self.exit_accuracies = [
            keras.metrics.CategoricalAccuracy(name=f"exit_{k + 1}_accuracy") for k in range(num_exits)
        ]
        self._warned_no_phase_callback = False

    # --- the forward pass, stage by stage ---------------------------------
    @property
    def stage_plan(self):
        """The ``StagePlan`` behind this model: per stage, its blocks, trunk
        adapters, bypass and head. The functional graph, the stage models,
        the single-exit model and the FLOPs counter are all built from it."""
        return self._plan

    def build_single_exit_model(self):
        """images -> ``{"probabilities"}`` of the last exit, without the early
        heads: the "full model" that FLOPs fractions and latencies compare to."""
        return stage_models.single_exit_model(self._plan)

    def build_stage_models(self, probabilities=True):
        """One functional model per stage, sharing this model's layers (see
        ``keras_dmpo.models.stage_models.stage_models``). Used for batched
        early exit and for the TFLite stage graphs."""
        return stage_models.stage_models(self._plan, probabilities)

    def exit_bypass(self, k):
        """The ``BypassAdapter`` that exit ``k`` (0-based) reads through, or
        None (the last exit, or a model without bypass)."""
        return self._plan.stages[k].bypass

    @property
    def bypass_exits(self):
        """Block numbers of the exits whose predictor reads through a bypass."""
        return tuple(stage.exit_block for stage in self._plan.stages if stage.bypass is not None)

    # --- public properties ------------------------------------------------
    @property
    def num_exits(self):
        return len(self.exits)

    @property
    def stages(self):
        """The ``ViTStages`` split of the backbone."""
        return self._plan.vit_stages

    @property
    def image_shape(self):
        return self._plan.image_shape

    # --- precision --------------------------------------------------------
    @property
    def computes_in_float32(self):
        """False for a model built under a mixed precision policy (its blocks,
        adapters and bypasses compute in bfloat16 / float16)."""
        return all(layer.compute_dtype == "float32" for layer in self._flatten_layers())

    def float32_copy(self):
        """This model's weights in a model that computes in float32, or the
        model itself when it already does.

        A model built under ``mixed_bfloat16`` / ``mixed_float16`` keeps that
        policy in its layers (and its saved config records the backbone's).
        Its variables are float32 already, so the copy holds the same values.
        The exports use it: TFLite and ONNX stage graphs are float32.

        Example:

        >>> import keras_hub
        >>> backbone = keras_hub.models.ViTBackbone(image_shape=(32, 32, 3), patch_size=8,
        ...     num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, dtype="mixed_bfloat16")
        >>> mixed = DMPOClassifier(backbone, num_classes=3, exits=[1, 2])
        >>> mixed.computes_in_float32, mixed.float32_copy().computes_in_float32
        (False, True)
        """
        if self.computes_in_float32:
            return self
        config = self.get_config()
        config["backbone"] = {
            **config["backbone"],
            "config": {**config["backbone"]["config"], "dtype": "float32"},
        }
        previous = keras.config.dtype_policy()
        keras.mixed_precision.set_dtype_policy("float32")
        try:
            copy = type(self).from_config(config)
        finally:
            keras.mixed_precision.set_dtype_policy(previous)
        copy.set_weights(self.get_weights())
        return copy

    # --- training ---------------------------------------------------------
    def compile(self, optimizer="adamw", loss=None, metrics=None, **kwargs):
        """Compile with DMPO's loss; ``loss`` and ``metrics`` are not needed.

        The loss is always the weighted sum of the per-exit cross-entropies;
        per-exit losses and accuracies are logged as ``exit_k_loss`` and
        ``exit_k_accuracy``. Extra ``metrics`` are passed to Keras as usual.
        """
        if loss is not None:
            raise ValueError(
                "DMPOClassifier computes its own loss (weighted per-exit "
                f"cross-entropy); do not pass `loss` (got {loss!r})."
            )
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # Keras skips restoring the compile state of models that override
        # compile(); ours only fixes the loss, so restore it ourselves.
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        self.compile(**config)
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def _one_hot(self, y):
        y = ops.convert_to_tensor(y)
        if len(y.shape) >= 2 and y.shape[-1] == self.num_classes and self.num_classes > 1:
            return ops.cast(y, "float32")
        y = ops.reshape(y, (-1,))
        return ops.one_hot(ops.cast(y, "int32"), self.num_classes, dtype="float32")

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        targets = self._one_hot(y)
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        logits = [ops.cast(y_pred[f"exit_{k + 1}"], "float32") for k in range(self.num_exits)]
        weights = ops.convert_to_tensor(self.exit_loss_weights)
        if sample_weight is not None:
            sample_weight = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        total = 0.0
        for k, exit_logits in enumerate(logits):
            per_sample = keras.losses.categorical_crossentropy(targets, exit_logits, from_logits=True)
            exit_loss = losses.weighted_mean(per_sample, sample_weight)
            self.exit_loss_trackers[k].update_state(exit_loss)
            total = total + weights[k] * exit_loss
        # Phase-2 self-distillation: early exits also match the last exit's
        # softened distribution (teacher gradient stopped).
        temperature = ops.convert_to_tensor(self.distill_temperature)
        teacher = ops.stop_gradient(ops.softmax(logits[-1] / temperature, axis=-1))
        distill = 0.0
        for k, exit_logits in enumerate(logits[:-1]):
            log_student = ops.log_softmax(exit_logits / temperature, axis=-1)
            kl = ops.sum(teacher * (ops.log(teacher + 1e-8) - log_student), axis=-1)
            distill = distill + weights[k] * losses.weighted_mean(kl, sample_weight)
        total = total + ops.convert_to_tensor(self.distill_weight) * temperature**2 * distill
        for loss in self.losses:
            total = total + ops.cast(ops.sum(loss), "float32")
        return losses.scale_loss_for_replicas(total)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        targets = self._one_hot(y)
        for k in range(self.num_exits):
            self.exit_accuracies[k].update_state(
                targets, y_pred[f"exit_{k + 1}"], sample_weight=sample_weight
            )
        # The current loss weights are logged by PhaseCallback: under JAX the
        # variables are not readable here during fit.
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def fit(self, x=None, y=None, *args, callbacks=None, **kwargs):
        self._check_inputs(x, y)
        x = checked_stream(x)
        if kwargs.get("validation_data") is not None and not isinstance(kwargs["validation_data"], tuple):
            kwargs["validation_data"] = checked_stream(kwargs["validation_data"], "validation_data")
        if hasattr(x, "epoch_callback"):  # ImageBatches: shuffle/augmentation follow fit's epoch
            callbacks = [*(callbacks or []), x.epoch_callback()]
            # It shuffles itself, from (seed, epoch); Keras' own shuffle of
            # the batch order draws from Python's global RNG, which a resumed
            # run does not restore.
            kwargs.setdefault("shuffle", False)
        # A callback that schedules the loss weights says so (PhaseCallback
        # does); asking it keeps the model free of the training package.
        if not any(getattr(c, "controls_loss_weights", False) for c in (callbacks or [])):
            if not self._warned_no_phase_callback:
                warnings.warn(
                    "DMPOClassifier.fit without a PhaseCallback: the per-exit loss "
                    f"weights stay fixed at {np.round(self.get_loss_weights(), 3).tolist()}. "
                    "Pass callbacks=[keras_dmpo.PhaseCallback(keras_dmpo.PhaseSchedule())] "
                    "for DMPO's two-phase training.",
                    stacklevel=2,
                )
                self._warned_no_phase_callback = True
        with _plain_bad_batch_errors(self):
            return super().fit(x, y, *args, callbacks=callbacks, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_inputs(x, y)
        with _plain_bad_batch_errors(self):
            return super().evaluate(checked_stream(x), y, *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        self._check_inputs(x, None)
        with _plain_bad_batch_errors(self):
            return super().predict(checked_stream(x), *args, **kwargs)

    def get_loss_weights(self):
        return keras.ops.convert_to_numpy(self.exit_loss_weights).astype("float64")

    def set_loss_weights(self, weights, distill_weight=None, distill_temperature=None):
        """Assign the per-exit loss weights (and optionally distillation)."""
        weights = validate_loss_weights(weights, self.num_exits, "weights")
        if keras.backend.backend() == "jax" and hasattr(self, "jax_state_sync"):
            # Inside fit, JAX keeps the variables in a state tree; push it to
            # the variables first so the next step reads the new values.
            self.jax_state_sync()
        self.exit_loss_weights.assign(weights)
        if distill_weight is not None:
            self.distill_weight.assign(float(distill_weight))
        if distill_temperature is not None:
            self.distill_temperature.assign(float(distill_temperature))

    # --- input checks -----------------------------------------------------
    def _check_inputs(self, x, y):
        batch = first_batch(x, y)
        if batch is None:
            return
        images, labels = batch
        check_images(images, self.image_shape, "x")
        if labels is not None:
            check_labels(labels, self.num_classes, "y")

    # --- presets and serialisation ---------------------------------------
    @classmethod
    def from_preset(cls, preset, num_classes, exits=None, image_shape=None, **kwargs):
        """Build from a keras-hub ViT, DeiT or DINOv2 preset name, a local
        preset directory, or a keras_dmpo short name (``keras_dmpo.presets``).

        ``image_shape=(S, S, 3)`` picks the input size where the family
        allows it (DINOv2). A short name brings its own defaults (e.g.
        ``dinov2_small_imgfocus``: 224 px and ImageNet normalisation), which
        explicit arguments override.
        """
        backbone, defaults = load_preset_backbone(preset, image_shape)
        return cls(backbone=backbone, num_classes=num_classes, exits=exits, **{**defaults, **kwargs})

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "num_classes": self.num_classes,
            "exits": list(self.exits),
            "covariance_exits": self.covariance_exits,
            "use_bypass": self.use_bypass,
            "peft": self.peft,
            "adapter_dim": self.adapter_dim,
            "adapter_scale": self.adapter_scale,
            "lora_rank": self.lora_rank,
            "bypass_dim": self.bypass_dim,
            "covariance_dim": self.covariance_dim,
            "covariance_iterations": self.covariance_iterations,
            "head_dropout": self.head_dropout,
            "label_smoothing": self.label_smoothing,
            "loss_weights": self.initial_loss_weights,
            "input_normalization": self.input_normalization,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)


@contextlib.contextmanager
def _plain_bad_batch_errors(model):
    """A stream's bad batch found mid-epoch surfaces as the ValueError naming
    the batch and sample, not inside a backend's data-pipeline traceback.

    On JAX, ``evaluate`` and ``predict`` detach the variables' values while
    they run and attach them back only when they finish (``fit`` does so in
    a ``finally``); after an error the state of the last finished step is
    attached back here. An error surfacing in the very first step (JAX reads
    two batches ahead) leaves nothing to attach: reload the model then."""
    try:
        yield
    except Exception as error:
        if hasattr(model, "jax_state_sync"):
            model.jax_state_sync()
        plain = reraise_bad_batch(error)
        if plain is None:
            raise
        raise plain from None
