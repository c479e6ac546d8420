"""Convert published CNN weights into an mrnn-jax encoder weights file.

    python data_prep/convert_weights.py --arch vgg16 \
        --source vgg16_weights_tf_dim_ordering_tf_kernels.h5 --out weights/vgg16.msgpack
    python data_prep/convert_weights.py --arch resnet50 --source resnet50-0676ba61.pth \
        --out weights/resnet50.msgpack
    python data_prep/convert_weights.py --arch alexnet --source alexnet.safetensors \
        --out weights/alexnet.msgpack

Sources: torchvision / timm checkpoints (.pth, .pt, .bin: need PyTorch; .safetensors: need
only the safetensors package) for all three, and Keras' VGG-16 .h5 (any Keras version's
naming). The output records the architecture, the source file and its SHA-256, and the
preprocessing the source expects (RGB or BGR, mean and std, resize and crop), so that
`mrnn extract-features` and `mrnn train encoder.name=...` need nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep.weights import alexnet, resnet50, vgg16  # noqa: E402
from data_prep.weights.torch_files import load_state_dict  # noqa: E402
from mrnn_jax.encoders.weights import save_encoder_weights, source_info  # noqa: E402
from mrnn_jax.errors import MrnnError  # noqa: E402

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
CONVERTERS = {"vgg16": vgg16, "resnet50": resnet50, "alexnet": alexnet}


def convert(arch: str, source: str, out: str) -> dict:
    """Converts ``source`` (an ``arch`` weights file) into ``out``; returns the metadata."""
    if arch not in CONVERTERS:
        raise MrnnError(f"unknown architecture {arch!r}; choose from {', '.join(CONVERTERS)}")
    module = CONVERTERS[arch]
    if source.endswith(".h5"):
        if arch != "vgg16":
            raise MrnnError(f"{source}: Keras .h5 files are supported for vgg16 only")
        variables = vgg16.from_keras_h5(source)
        preprocessing, fmt = vgg16.PREPROCESSING["keras_h5"], "keras_h5"
    elif source.endswith(TORCH_SUFFIXES):
        variables = module.from_torch(load_state_dict(source), source=source)
        preprocessing = module.PREPROCESSING
        if isinstance(preprocessing, dict):
            preprocessing = preprocessing["torch"]
        fmt = "safetensors" if source.endswith(".safetensors") else "torch"
    else:
        raise MrnnError(
            f"{source}: unknown weights format; expected .h5 (Keras) or "
            f"{', '.join(TORCH_SUFFIXES)} (PyTorch)"
        )
    info = source_info(source, fmt)
    save_encoder_weights(out, arch, variables, info, preprocessing)
    return {"architecture": arch, "source": info, "preprocessing": preprocessing.to_json()}


def main(argv: list[str] | None = None) -> int:
    """Runs the converter (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", required=True, choices=sorted(CONVERTERS))
    parser.add_argument("--source", required=True, help="the downloaded weights file")
    parser.add_argument("--out", required=True, help="the converted file to write (.msgpack)")
    args = parser.parse_args(argv)
    try:
        meta = convert(args.arch, args.source, args.out)
    except MrnnError as error:
        print(f"convert_weights: error: {error}", file=sys.stderr)
        return 2
    prep = meta["preprocessing"]
    print(
        f"{args.out}: {args.arch} from {meta['source']['file_name']} "
        f"(sha256 {meta['source']['sha256'][:12]}...), expects {prep['channels']} images, "
        f"resize {prep['resize']} crop {prep['crop']}, mean {prep['mean']}, std {prep['std']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
