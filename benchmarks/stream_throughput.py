"""Host throughput of the streaming input path: read + JPEG decode + crop + flip, in images/s.

  python benchmarks/stream_throughput.py --images=1024 --threads=1,2,4,8 --processes=0,2 --repeats=3

Writes `--images` synthetic JPEGs of ImageNet's typical size (500×375, smooth
colour fields with noise, quality 93: ~110 KB each, ILSVRC-2012's mean file size) into an
array_record TFDS dataset in a temporary dir, then times
`jaxdl.data.stream.TrainStream.host_batches` (the training path: `tfds.data_source`
read, TFDS's PIL decode, the Inception random-resized crop to 224, flip, batching)
and the evaluation preprocessing (resize to 256, centre 224) for each grain set-up:
the median of `--repeats` turns, with the range.
"""
import argparse
import io
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from PIL import Image  # noqa: E402

from jaxdl.data import stream  # noqa: E402


def synthetic_jpeg(rng: np.random.Generator, height: int = 375, width: int = 500) -> bytes:
    """A photo-like JPEG: a smooth random colour field plus sensor-like noise."""
    coarse = rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), np.float32)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=93)
    return out.getvalue()


class SyntheticJpegs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Synthetic ImageNet-sized JPEGs with 1,000 labels."""

    VERSION = tfds.core.Version("1.0.0")
    NUM_IMAGES = 1024

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=1000)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        rng = np.random.default_rng(0)
        for i in range(self.NUM_IMAGES):
            yield i, {"image": synthetic_jpeg(rng), "label": i % 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", default="1,2,4")
    parser.add_argument("--processes", default="0,2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    SyntheticJpegs.NUM_IMAGES = args.images
    with tempfile.TemporaryDirectory() as tmp:
        builder = SyntheticJpegs(data_dir=tmp, file_format="array_record")
        builder.download_and_prepare(file_format="array_record")
        source = builder.as_data_source(split="train")
        sizes = [len(synthetic_jpeg(np.random.default_rng(i))) for i in range(16)]
        print(f"{len(source)} JPEGs of 500×375, ~{np.mean(sizes) / 1e3:.0f} KB each; {os.cpu_count()} CPUs")

        keys = jax.random.PRNGKey(0)[None]
        train = stream.Preprocess(crop="inception", size=224, flip=True)
        evaluation = stream.Preprocess(crop="center", size=224, resize=256)
        steps = len(source) // args.batch
        setups = [(p, t) for p in map(int, args.processes.split(",")) for t in map(int, args.threads.split(","))]
        rates = {setup: ([], []) for setup in setups}
        decode = []
        # Other work shares this machine: the set-ups take turns, and the median is reported.
        for _ in range(args.repeats):
            t = time.perf_counter()
            for i in range(min(256, len(source))):
                source[i]
            decode.append(min(256, len(source)) / (time.perf_counter() - t))
            for processes, threads in setups:
                ts = stream.TrainStream(source, "image", "label", keys, keys, args.batch, steps, train,
                                        threads=threads, processes=processes)
                rates[processes, threads][0].append(_rate(ts.host_batches(0), axis=1))
                rates[processes, threads][1].append(_rate(stream.eval_batches(
                    source, "image", "label", args.batch, evaluation, threads=threads, processes=processes)))
        print(f"read + decode only, one thread: {np.median(decode):.0f} images/s "
              f"({min(decode):.0f}–{max(decode):.0f})")
        for (processes, threads), (train_rates, eval_rates) in rates.items():
            print(f"processes {processes}, threads {threads}: train {np.median(train_rates):.0f} images/s "
                  f"({min(train_rates):.0f}–{max(train_rates):.0f}), eval {np.median(eval_rates):.0f} "
                  f"({min(eval_rates):.0f}–{max(eval_rates):.0f})")


def _rate(batches, axis: int = 0) -> float:
    """Images/s of the batches after the first (start-up and the first batch are not throughput)."""
    next(batches)
    t = time.perf_counter()
    n = sum(b[0].shape[axis] for b in batches)
    return n / (time.perf_counter() - t)

if __name__ == "__main__":
    main()
