"""Feature extraction: a pretrained CNN's features of many images, into the precomputed
features format (``.npz`` or ``.npy`` + names + provenance) that training reads.

Jitted over every device of every process (process 0 writes the files). Resumable: images
are processed in fixed chunks, each written atomically to ``OUT.partial/`` as it completes;
a restarted run skips the chunks already there and recomputes the rest exactly as an
uninterrupted run would (same chunks, same batches). The output file appears only when every
chunk is done, written atomically, so a half-written output never exists. Images that cannot
be decoded are skipped and counted (or stop the run, ``on_bad_image="error"``).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from mrnn_jax import distributed, sharding
from mrnn_jax.encoders import make_encoder
from mrnn_jax.encoders.pretrained import load_pretrained
from mrnn_jax.errors import MrnnError
from mrnn_jax.files import write_bytes_atomic, write_text_atomic
from mrnn_jax.images import ImageError, load_image

log = logging.getLogger("mrnn_jax")

CHUNK_BATCHES = 8  # batches per resumable chunk


@dataclasses.dataclass
class ExtractionResult:
    """What an extraction wrote: the output path, images done, skipped, and the speed."""

    path: str
    names: list[str]
    skipped: list[str]
    images_per_second: float


def _chunk_path(partial: str, index: int) -> str:
    return os.path.join(partial, f"chunk_{index:06d}.npz")


def _decode(path: str, size: int, crop_fraction: float, on_bad_image: str):
    try:
        return load_image(path, size, "center_crop", crop_fraction)
    except ImageError as error:
        if on_bad_image == "error":
            raise MrnnError(f"{error} (--on-bad-image skip leaves it out)") from None
        log.warning("skipped: %s", error)
        return None


def extract_features(
    encoder_config: dict,
    names: Sequence[str],
    paths: Sequence[str],
    out: str,
    *,
    batch_size: int = 32,
    on_bad_image: str = "skip",
    dtype: str = "float16",
    progress: bool = True,
) -> ExtractionResult:
    """Computes the encoder's features of ``paths`` (saved under ``names``) into ``out``.

    ``encoder_config`` names the architecture, the converted weights file and optionally the
    feature (as the config's ``encoder`` section). ``out`` ends in ``.npz`` or ``.npy``.
    """
    if not out.endswith((".npz", ".npy")):
        raise MrnnError(f"{out}: the output must end in .npz or .npy")
    if len(names) != len(paths) or len(set(names)) != len(names):
        raise MrnnError("extract_features needs one unique name per image path")
    weights = load_pretrained(encoder_config)
    encoder_config = weights.encoder_config(encoder_config)
    params, meta = weights.params, weights.meta
    encoder = make_encoder(encoder_config)
    mesh = sharding.make_mesh()
    batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
    size = int(encoder_config["image_size"])
    crop_fraction = float(encoder_config["crop_fraction"])
    variables = sharding.replicate({"params": {"backbone": params}}, mesh)
    apply = jax.jit(
        lambda v, images: encoder.apply(v, images),
        in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
    )
    provenance = {
        "encoder": encoder_config["name"],
        "feature": encoder.feature_name,
        "dim": int(encoder_config["features_dim"]),
        "weights": meta["source"],
        "preprocessing": meta["preprocessing"],
        "image_size": size,
        "crop_fraction": crop_fraction,
        "dtype": dtype,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    job = {
        "names_hash": hash_names(names),
        "batch_size": batch_size,
        "encoder": provenance["encoder"],
        "feature": provenance["feature"],
        "weights_sha256": meta["source"].get("sha256"),
        "dtype": dtype,
        "on_bad_image": on_bad_image,
        "image_size": size,
        "crop_fraction": crop_fraction,
    }
    partial = out + ".partial"
    primary = distributed.is_primary()
    os.makedirs(partial, exist_ok=True)
    job_path = os.path.join(partial, "job.json")
    if os.path.isfile(job_path):
        with open(job_path, encoding="utf-8") as f:
            previous = json.load(f)
        if previous != job:
            raise MrnnError(
                f"{partial} holds an unfinished extraction of other images or settings; "
                "delete it or choose another --out"
            )
    elif primary:
        write_text_atomic(job_path, json.dumps(job))

    chunk = batch_size * CHUNK_BATCHES
    starts = range(0, len(paths), chunk)
    done = sum(os.path.isfile(_chunk_path(partial, i)) for i in range(len(starts)))
    bar = tqdm(
        total=len(paths),
        initial=min(done * chunk, len(paths)),
        disable=not progress or not primary,
        desc="extract",
        unit="img",
        dynamic_ncols=True,
    )
    computed, started = 0, time.time()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for index, start in enumerate(starts):
            chunk_path = _chunk_path(partial, index)
            if os.path.isfile(chunk_path):
                continue
            chunk_names = list(names[start : start + chunk])
            chunk_files = list(paths[start : start + chunk])
            features, kept, skipped = [], [], []
            for b in range(0, len(chunk_files), batch_size):
                decoded = list(
                    pool.map(
                        lambda p: _decode(p, size, crop_fraction, on_bad_image),
                        chunk_files[b : b + batch_size],
                    )
                )
                good = [i for i, image in enumerate(decoded) if image is not None]
                skipped += [chunk_names[b + i] for i, image in enumerate(decoded) if image is None]
                if good:
                    images = np.stack([decoded[i] for i in good])
                    count = len(images)
                    if count < batch_size:  # a fixed shape: pad, then drop the padding
                        images = np.concatenate(
                            [images, np.repeat(images[:1], batch_size - count, axis=0)]
                        )
                    placed = sharding.shard_batch({"images": images}, mesh)["images"]
                    out_batch = sharding.to_host(apply(variables, placed))[:count]
                    features.append(out_batch.astype(dtype))
                    kept += [chunk_names[b + i] for i in good]
                bar.update(len(decoded))
                computed += len(decoded)
                bar.set_postfix(img_s=f"{computed / max(time.time() - started, 1e-9):.1f}")
            dim = int(encoder_config["features_dim"])
            matrix = np.concatenate(features) if features else np.zeros((0, dim), dtype)
            if not primary:
                continue  # every process computes; process 0 writes
            _write_npz(
                chunk_path,
                features=matrix,
                filenames=np.asarray(kept, dtype=str),
                skipped=np.asarray(skipped, dtype=str),
            )
    bar.close()
    rate = computed / max(time.time() - started, 1e-9)
    if not primary:
        return ExtractionResult(out, [], [], rate)

    # Assemble the chunks into the output, atomically, then drop the partial folder.
    all_features, all_names, all_skipped = [], [], []
    for index in range(len(starts)):
        with np.load(_chunk_path(partial, index), allow_pickle=False) as data:
            all_features.append(data["features"])
            all_names += [str(n) for n in data["filenames"]]
            all_skipped += [str(n) for n in data["skipped"]]
    if not all_names:
        raise MrnnError("no image could be decoded; nothing written")
    matrix = np.concatenate(all_features)
    provenance["skipped_images"] = len(all_skipped)
    write_features(out, matrix, all_names, provenance)
    shutil.rmtree(partial, ignore_errors=True)
    if all_skipped:
        log.warning("%d images skipped, e.g. %s", len(all_skipped), ", ".join(all_skipped[:5]))
    return ExtractionResult(out, all_names, all_skipped, rate)


def hash_names(names: Sequence[str]) -> str:
    """A short fingerprint of an ordered list of image names."""
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]


def _write_npz(path: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def write_features(path: str, features: np.ndarray, names: list[str], provenance: dict) -> None:
    """Writes the precomputed-features format atomically: ``.npz`` (``features``,
    ``filenames``, ``provenance``) or ``.npy`` with ``.txt`` names and ``.json`` provenance."""
    if path.endswith(".npz"):
        _write_npz(
            path,
            features=features,
            filenames=np.asarray(names, dtype=str),
            provenance=np.asarray(json.dumps(provenance)),
        )
        return
    stem = os.path.splitext(path)[0]
    if os.path.exists(path):  # never a new names list beside an old matrix
        os.remove(path)
    write_text_atomic(stem + ".txt", "\n".join(names) + "\n")
    write_text_atomic(stem + ".json", json.dumps(provenance, indent=2) + "\n")
    buffer = io.BytesIO()
    np.save(buffer, features)
    write_bytes_atomic(path, buffer.getvalue())  # last: its presence means all is written
