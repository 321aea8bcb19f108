"""TensorBoard event files in the workdir, written without TensorFlow.

Every record the training loop appends to `metrics.jsonl` is also written as scalars
to `W/events.out.tfevents.<time>.<host>.jaxdl`, under the record's own keys (`train_loss`,
`test_accuracy`, `lr`, …; per-seed lists as `<key>/<k>`), and the PNGs of
`W/pictures/` become images at the run's last step. `tensorboard --logdir runs/`
shows every run under `runs/`.

The events are a copy of `metrics.jsonl`, which stays the record of truth: when a run
resumes, the loop cuts `metrics.jsonl` back to the restored step and `EventLog`
rewrites the event file from what is left, so no step appears twice whatever the
reader (TensorBoard's purging of orphaned steps differs between its Python reader and
its data server; a file that never holds them needs neither).
"""
from __future__ import annotations

import glob
import io
import math
import os
import socket
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

SUFFIX = ".jaxdl"


def event_files(workdir: str) -> list[str]:
    """The event files this module wrote in `workdir`, oldest first."""
    return sorted(glob.glob(os.path.join(workdir, f"events.out.tfevents.*{SUFFIX}")))


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one `metrics.jsonl` record: finite numbers, lists as `key/i`.

    `step` is the event's step, not a scalar; nested dicts (per-class tables) are left
    to `results.json`.
    """
    out = {}
    for key, value in record.items():
        if key == "step" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            items = [(key, value)]
        elif isinstance(value, list):
            items = [(f"{key}/{i}", v) for i, v in enumerate(value)
                     if isinstance(v, (int, float)) and not isinstance(v, bool)]
        else:
            continue
        out.update((k, float(v)) for k, v in items if math.isfinite(v))
    return out


def _scalar_event(step: int, values: Mapping[str, float], wall_time: float) -> event_pb2.Event:
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)
                                         for k, v in values.items()])
    return event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary)


def _image_event(step: int, tag: str, png: bytes, wall_time: float) -> event_pb2.Event:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        width, height = im.size
        channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}.get(im.mode, 3)
    image = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                      encoded_image_string=png)
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, image=image)])
    return event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary)


class EventLog:
    """One TensorBoard event file per workdir, kept equal to `metrics.jsonl`.

    Args:
      workdir: the run's directory.
      records: the `metrics.jsonl` records the run keeps (after a resume, those up to
        the restored step); any older event file is replaced by one holding exactly these.
    """

    def __init__(self, workdir: str, records: Iterable[Mapping[str, Any]] = ()):
        self.workdir = workdir
        now = time.time()
        # Written under a name TensorBoard ignores, then renamed: a run killed while
        # replaying leaves either the old file or the new one, never a half of each.
        tmp = os.path.join(workdir, ".events.tmp")
        with open(tmp, "wb") as f:
            writer = RecordWriter(f)
            writer.write(event_pb2.Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
            for record in records:
                values = scalars(record)
                if values:
                    writer.write(_scalar_event(record["step"], values, now).SerializeToString())
        for old in event_files(workdir):
            os.remove(old)
        host = socket.gethostname().replace(os.sep, "_") or "host"
        self.path = os.path.join(workdir, f"events.out.tfevents.{int(now):010d}.{host}.{os.getpid()}{SUFFIX}")
        os.replace(tmp, self.path)

    def _append(self, event: event_pb2.Event) -> None:
        # Opened per event, as metrics.jsonl is: a run that stops anywhere (a kill, a
        # divergence) leaves whole records and no open file behind.
        with open(self.path, "ab") as f:
            RecordWriter(f).write(event.SerializeToString())

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends one `metrics.jsonl` record (with its `step`) as scalars."""
        values = scalars(record)
        if values:
            self._append(_scalar_event(record["step"], values, time.time()))

    def image(self, step: int, tag: str, png: bytes) -> None:
        """Appends one PNG image under `tag`."""
        self._append(_image_event(step, tag, png, time.time()))

    def pictures(self, step: int, directory: str) -> list[str]:
        """Appends every PNG in `directory` as an image tagged `pictures/<file stem>`."""
        paths = sorted(glob.glob(os.path.join(directory, "*.png")))
        for path in paths:
            with open(path, "rb") as f:
                self.image(step, "pictures/" + os.path.splitext(os.path.basename(path))[0], f.read())
        return paths
