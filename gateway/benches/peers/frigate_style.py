#!/usr/bin/python3
"""The Python peer of the video pipeline benchmark (issue 18): a Frigate-style pipeline, as an
integrator would build it from the usual parts, on the same footage, model and threads.

    ffmpeg (subprocess) decodes and scales the video to the model's letterboxed input,
    raw BGR frames on a pipe --> numpy: HWC uint8 -> NCHW float32
                             --> onnxruntime (Python, CPU, same intra-op threads, no spinning)
                             --> numpy: YOLOX grid decode, score filter, class-aware NMS

Scaling in ffmpeg (its swscale, in C) rather than in Python keeps the peer strong: numpy has
no resampler and a Python loop would be a strawman. Like the gateway's bench, the detector
runs on every frame.

Run by `gateway/benches/video_pipeline.rs`:
`frigate_style.py VIDEO SECONDS MODEL THREADS` -> one JSON line {"frames", "seconds", "boxes"}.
Needs Debian's python3-numpy and the onnxruntime Python package that `./x deps` unpacks
from the pinned wheel into vendor/python (PYTHONPATH).
"""

import json
import subprocess
import sys
import time

import numpy as np
import onnxruntime as ort

SIZE = 416
CANDIDATE_SCORE = 0.1
NMS_IOU = 0.45


def probe_size(video):
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=width,height", "-of", "csv=p=0", video],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    w, h = out.split(",")[:2]
    return int(w), int(h)


def grid():
    cells = []
    for stride in (8, 16, 32):
        n = SIZE // stride
        gy, gx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        cells.append(np.stack([gx.ravel(), gy.ravel(), np.full(n * n, stride)], axis=1))
    return np.concatenate(cells).astype(np.float32)


def nms(boxes, scores, classes):
    order = np.argsort(-scores)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        x1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        iou = inter / (area(boxes[i]) + area(boxes[rest]) - inter + 1e-9)
        order = rest[(iou <= NMS_IOU) | (classes[rest] != classes[i])]
    return keep


def decode(out, cells, ratio):
    obj = out[:, 4]
    cls = out[:, 5:]
    best = cls.argmax(axis=1)
    score = obj * cls[np.arange(len(cls)), best]
    m = (obj >= CANDIDATE_SCORE) & (score >= CANDIDATE_SCORE)
    out, c, best, score = out[m], cells[m], best[m], score[m]
    cx = (out[:, 0] + c[:, 0]) * c[:, 2]
    cy = (out[:, 1] + c[:, 1]) * c[:, 2]
    w = np.exp(out[:, 2]) * c[:, 2]
    h = np.exp(out[:, 3]) * c[:, 2]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) / ratio
    return len(nms(boxes, score, best)) if len(boxes) else 0


def main():
    video, seconds, model, threads = sys.argv[1], float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    w, h = probe_size(video)
    ratio = min(SIZE / w, SIZE / h)
    sw, sh = int(round(w * ratio)) // 2 * 2, int(round(h * ratio)) // 2 * 2
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    cells = grid()
    started = time.monotonic()
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-v", "error", "-threads", "1", "-i", video, "-t", str(seconds),
         "-vf", f"scale={sw}:{sh},pad={SIZE}:{SIZE}:0:0:color=0x727272",
         "-f", "rawvideo", "-pix_fmt", "bgr24", "-"],
        stdout=subprocess.PIPE,
    )
    frame_bytes = SIZE * SIZE * 3
    frames = boxes = 0
    while True:
        raw = ffmpeg.stdout.read(frame_bytes)
        if len(raw) < frame_bytes:
            break
        img = np.frombuffer(raw, dtype=np.uint8).reshape(SIZE, SIZE, 3)
        tensor = np.ascontiguousarray(img.transpose(2, 0, 1)[None], dtype=np.float32)
        out = session.run(None, {name: tensor})[0][0]
        boxes += decode(out, cells, ratio)
        frames += 1
    ffmpeg.wait()
    elapsed = time.monotonic() - started
    print(json.dumps({"frames": frames, "seconds": elapsed, "boxes": boxes}), flush=True)


if __name__ == "__main__":
    main()
