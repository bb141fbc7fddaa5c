"""`dexrt serve` under load: N associations each sending M radiographs at once to a node, which converts them and
forwards the bone and soft instances to a destination SCP; all on 127.0.0.1.

The node runs as it is deployed, `dexrt serve --json` in its own process, with the bundled default engine. The
senders (one thread and one association each) and the destination run in this process. Measured:

- received/s: instances acknowledged by the node, from the first C-STORE sent to the last acknowledgement;
- converted/s: from the first send to the node's last `converted` log event;
- forwarded/s: derived instances arriving at the destination, from the first send to the last arrival;
- end-to-end latency per instance: from its C-STORE being sent to the arrival of the later of its two outputs;
- the peer: the same files converted by `dexrt infer`'s machinery (`Converter.run`, same engine settings, in
  process, folder to folder), so the node's cost for the network, the spool and the forwarding shows as a ratio.

Asserts that nothing was lost or duplicated: every source's two outputs arrived exactly once.

    python -m pytest benchmarks/bench_serve.py -s          # 256^2 and 2048^2 with the default N x M
    python benchmarks/bench_serve.py --size 512 -n 8 -m 8  # any size and load
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

pytest.importorskip("pynetdicom")

from serve_helpers import DX, LOOPBACK, Destination, free_port, radiograph, send, wait_until  # noqa: E402

# (size, associations, images per association, detector pixel spacing in mm or None)
CASES = {
    "256": (256, 4, 16, None),  # no spacing: inferred at 256^2 as is
    "2048": (2048, 4, 4, 0.171),  # a 35 cm detector; resampled to the model's spacing for inference and back
}


def start_node(spool: Path, dest: Destination, log: Path, jobs: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-c", "from dexrt.cli import main; main()", "serve", "--json", "--host", LOOPBACK,
               "--port", str(port), "--allow-ae", "MODALITY", "--forward", dest.address, "--spool", str(spool),
               "--jobs", str(jobs)]
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)

    def listening() -> bool:
        return proc.poll() is not None or '"event": "listening"' in log.read_text()

    wait_until(listening, 120, "the node to listen")
    assert proc.poll() is None, log.read_text()
    return proc, port


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                out.append(record)
    return out


def _epoch(record: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(record["time"]).timestamp()


def run_load(size: int, associations: int, images: int, spacing: float | None, work: Path,
             jobs: int = 8) -> dict[str, Any]:
    """One load run; returns the measurements (and asserts nothing was lost or duplicated)."""
    batches = []
    for a in range(associations):
        batch = []
        for i in range(images):
            ds = radiograph(size, DX, seed=a * images + i)
            if spacing:
                ds.ImagerPixelSpacing = [spacing, spacing]
            batch.append(ds)
        batches.append(batch)
    sources = {str(ds.SOPInstanceUID): ds for batch in batches for ds in batch}
    total = len(sources)
    dest = Destination().start()
    proc, port = start_node(work / "spool", dest, work / "node.log", jobs)
    sent: dict[str, float] = {}
    acked: dict[str, float] = {}
    statuses: list[int | None] = []
    lock = threading.Lock()

    def sender(batch: list[Any]) -> None:
        def on_ack(ds: Any, status: int) -> None:
            with lock:
                acked[str(ds.SOPInstanceUID)] = time.time()

        result = send_stamped(batch, port, on_ack, sent, lock)
        with lock:
            statuses.extend(result)

    try:
        threads = [threading.Thread(target=sender, args=(b,)) for b in batches]
        start = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        wait_until(lambda: len(dest.unique()) >= 2 * total, 600, f"{2 * total} derived instances", step=0.01)
        end = time.time()
        time.sleep(1.0)  # anything duplicated would arrive now
    finally:
        proc.terminate()
        proc.wait(60)
        dest.stop()
    assert statuses == [0x0000] * total, f"statuses {set(statuses)}"
    by_source = dest.by_source()
    assert set(by_source) == set(sources) and all(len(v) == 2 for v in by_source.values()), "lost outputs"
    assert len(dest.received) == 2 * total, f"{len(dest.received) - 2 * total} duplicated deliveries"
    converted = events(work / "node.log", "converted")
    assert len(converted) == total and not events(work / "node.log", "duplicate")
    latency = sorted(max(dest.arrivals[str(d.SOPInstanceUID)] for d in by_source[uid]) - sent[uid]
                     for uid in sources)
    first = min(sent.values())
    # "8x5,3x1": batch size x count, from the node's own engine; > 1 means associations shared batches
    histogram = [tuple(map(int, b.split("x"))) for b in events(work / "node.log", "stopped")[-1]
                 .get("engine_batch_sizes", "").split(",") if b]
    return {
        "mean_engine_batch": sum(n * c for n, c in histogram) / max(sum(c for _, c in histogram), 1),
        "size": size, "associations": associations, "images_per_association": images, "instances": total,
        "spacing_mm": spacing, "jobs": jobs,
        "received_per_s": total / (max(acked.values()) - first),
        "converted_per_s": total / (max(_epoch(e) for e in converted) - first),
        "forwarded_per_s": 2 * total / (max(dest.arrivals.values()) - first),
        "latency_p50_s": statistics.median(latency),
        "latency_p99_s": latency[min(len(latency) - 1, round(0.99 * (len(latency) - 1)))],
        "wall_s": end - start, "lost": 0, "duplicated": 0,
    }


def send_stamped(batch: list[Any], port: int, on_ack: Any, sent: dict[str, float], lock: threading.Lock) -> list:
    """`send`, recording the time each C-STORE starts (the ack callback of the previous one is that moment)."""
    position = {str(ds.SOPInstanceUID): i for i, ds in enumerate(batch)}

    def ack(ds: Any, status: int) -> None:
        on_ack(ds, status)
        index = position[str(ds.SOPInstanceUID)] + 1
        if index < len(batch):
            with lock:
                sent[str(batch[index].SOPInstanceUID)] = time.time()

    with lock:
        sent[str(batch[0].SOPInstanceUID)] = time.time()
    return send(batch, port, on_ack=ack)


def peer_folder_rate(size: int, spacing: float | None, count: int, work: Path, jobs: int = 8) -> float:
    """Images per second of `dexrt infer`'s machinery on the same kind of files, folder to folder."""
    import dexrt
    from dexrt.pipelines.convert import FOLDER_ENGINE_OPTIONS, Converter
    from dexrt.io.layout import find_images
    from dexrt.models import DEFAULT_ENGINE

    folder = work / "peer_in"
    folder.mkdir()
    for i in range(count):
        ds = radiograph(size, DX, seed=i)
        if spacing:
            ds.ImagerPixelSpacing = [spacing, spacing]
        ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
    with dexrt.Engine(DEFAULT_ENGINE, **FOLDER_ENGINE_OPTIONS) as engine:
        converter = Converter(engine, work / "peer_out", jobs=jobs)
        start = time.perf_counter()
        outcomes = list(converter.run(find_images(folder)))
        seconds = time.perf_counter() - start
    assert all(o.ok for o in outcomes) and len(outcomes) == count
    return count / seconds


def report(result: dict[str, Any]) -> str:
    r = result
    return (f"{r['size']}^2, {r['associations']} associations x {r['images_per_association']} images "
            f"({r['instances']} instances, 0 lost, 0 duplicated): received {r['received_per_s']:.2f}/s, "
            f"converted {r['converted_per_s']:.2f}/s, forwarded {r['forwarded_per_s']:.2f} instances/s; "
            f"latency p50 {r['latency_p50_s']:.2f} s, p99 {r['latency_p99_s']:.2f} s; "
            f"mean engine batch {r['mean_engine_batch']:.2f}; "
            f"peer dexrt infer (folder) {r['peer_images_per_s']:.2f} images/s, "
            f"node/peer {r['converted_per_s'] / r['peer_images_per_s']:.2f}")


@pytest.mark.parametrize("case", list(CASES))
def test_serve_load(benchmark, case: str, tmp_path: Path) -> None:  # noqa: ANN001 - pytest-benchmark fixture
    size, n, m, spacing = CASES[case]
    result = benchmark.pedantic(run_load, args=(size, n, m, spacing, tmp_path), rounds=1, iterations=1)
    result["peer_images_per_s"] = peer_folder_rate(size, spacing, n * m, tmp_path)
    benchmark.group = "dexrt serve"
    benchmark.extra_info.update({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})
    print("\n" + report(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("-n", "--associations", type=int, default=4)
    parser.add_argument("-m", "--images", type=int, default=16)
    parser.add_argument("--spacing", type=float, default=None, help="ImagerPixelSpacing in mm (default none)")
    parser.add_argument("-j", "--jobs", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_load(args.size, args.associations, args.images, args.spacing, Path(tmp), args.jobs)
        peer = Path(tmp) / "peer"
        peer.mkdir()
        result["peer_images_per_s"] = peer_folder_rate(args.size, args.spacing, args.associations * args.images,
                                                       peer, args.jobs)
    print(report(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
