"""The end-to-end demo behind ``keras-dmpo demo`` (grows with the project)."""

import os
import time


def run_demo(args):
    import keras
    import keras_hub
    import numpy as np

    from keras_dmpo.models.vit_stages import ViTStages, load_vit_backbone

    start = time.time()
    os.makedirs(args.output_dir, exist_ok=True)
    print(f"keras_dmpo demo on the {keras.backend.backend()} backend")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(28, 28, 3), patch_size=4, num_layers=8, num_heads=4,
        hidden_dim=128, mlp_dim=256,
    )
    preset_dir = os.path.join(args.output_dir, "random_vit_preset")
    backbone.save_to_preset(preset_dir)
    backbone = load_vit_backbone(preset_dir)
    stages = ViTStages(backbone)
    images = np.random.default_rng(0).uniform(size=(8, 28, 28, 3)).astype("float32")
    tokens = stages.tokens_model.predict(images, verbose=0)
    full = keras.ops.convert_to_numpy(backbone(images))
    print(f"exits (1-based blocks): {stages.exits}")
    for name in sorted(tokens, key=lambda n: int(n.split("_")[1])):
        print(f"  {name}: tokens {tokens[name].shape}")
    last = f"exit_{len(stages.exits)}"
    print(f"last exit vs backbone output: max |diff| = {np.max(np.abs(tokens[last] - full)):.2e}")
    print(f"done in {time.time() - start:.1f} s; output in {args.output_dir}/")
    return 0
