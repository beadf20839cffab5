"""LAION-style subsets: download url+caption parquet rows with img2dataset (optional extra).

    pip install 'clip-bias-lab[laion]'     # img2dataset, pyarrow
    python -m data_prep laion --parquet part-00000.parquet --out data/laion --num-samples 100000

The shards come out in the same layout as :mod:`data_prep.synth` (img2dataset writes
``00000.tar`` + ``00000.parquet`` + ``00000_stats.json``); ``sizes.json`` (successful samples
per shard) and ``meta.json`` are added. Their json has no ``objects``: the caption-order analysis
needs a detector for them (:class:`data_prep.caption_order.Detector`).

Note: img2dataset 1.47 pins ``webdataset<0.3``; its writer works with webdataset 1.0
(``wds.TarWriter``), so install it with ``pip install --no-deps img2dataset`` plus its small
dependencies if pip would downgrade webdataset.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from .fileio import write_json_atomic
from .shards import prepare_out_dir, shard_name, write_meta

RESIZE_MODES = ("center_crop", "border", "keep_ratio", "no")


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the laion command needs {module!r} ({e}); "
                          "install the optional extra: pip install 'clip-bias-lab[laion]'") from e


def validate_parquet(path, url_col: str = "url", caption_col: str = "caption") -> int:
    """Check that ``path`` is a readable parquet file with both columns; return its row count."""
    pq = _require("pyarrow.parquet")
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--parquet {path} does not exist or is not a file")
    try:
        meta = pq.read_metadata(path)
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise ValueError(f"--parquet {path} is not a readable parquet file: {e}") from None
    missing = [c for c in (url_col, caption_col) if c not in schema.names]
    if missing:
        raise ValueError(f"--parquet {path} lacks column(s) {missing}; columns: {schema.names} "
                         "(choose others with --url-col / --caption-col)")
    return meta.num_rows


def _collect_sizes(out: Path) -> dict[str, int]:
    sizes = {}
    for stats in sorted(out.glob("*_stats.json")):
        shard = stats.name[: -len("_stats.json")] + ".tar"
        if (out / shard).exists():
            sizes[shard] = int(json.loads(stats.read_text())["successes"])
    return sizes


def download(parquet, out_dir, num_samples: int | None = None, image_size: int = 64, url_col: str = "url",
             caption_col: str = "caption", processes: int = 1, threads: int = 8, shard_size: int = 1000,
             overwrite: bool = False, resize_mode: str = "center_crop", timeout: int = 10,
             retries: int = 0) -> dict:
    """Download the parquet's rows (at most ``num_samples``) into img2dataset webdataset shards.

    Args:
        parquet: parquet file with url and caption columns.
        out_dir: output directory (must be empty unless ``overwrite``).
        num_samples: use only the first N rows (None = all).
        image_size: side of the square output images.
        url_col, caption_col: column names.
        processes, threads: img2dataset parallelism.
        shard_size: samples per tar.
        overwrite: clear our files from a non-empty ``out_dir``.
        resize_mode: img2dataset resize mode (center_crop gives square images).
        timeout, retries: per-image HTTP timeout (s) and retries.
    Returns:
        the meta dict written to ``meta.json`` (``num_rows``, ``num_success``, arguments).
    """
    n_rows = validate_parquet(parquet, url_col, caption_col)
    errs = []
    if num_samples is not None and num_samples < 1:
        errs.append(f"--num-samples must be positive, got {num_samples}")
    if image_size < 1 or shard_size < 1 or processes < 1 or threads < 1:
        errs.append("--image-size, --shard-size, --processes and --threads must be positive")
    if resize_mode not in RESIZE_MODES:
        errs.append(f"--resize-mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if errs:
        raise ValueError("; ".join(errs))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations would phone home on import
    img2dataset = _require("img2dataset")
    pq = _require("pyarrow.parquet")
    used = min(n_rows, num_samples) if num_samples else n_rows
    shards = [shard_name(s)[:-4] for s in range(math.ceil(used / shard_size))]  # img2dataset's shard names
    planned = [s + ext for s in shards for ext in (".tar", "_stats.json", ".parquet")] + ["sizes.json", "meta.json"]
    out = prepare_out_dir(Path(out_dir), overwrite, planned=planned)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".input_", dir=out))  # removed below
    try:
        table = pq.read_table(parquet, columns=[url_col, caption_col]).slice(0, used)
        src = tmp_dir / "input.parquet"
        pq.write_table(table, src)
        img2dataset.download(
            url_list=str(src), image_size=image_size, output_folder=str(out), processes_count=processes,
            thread_count=threads, resize_mode=resize_mode, output_format="webdataset", input_format="parquet",
            url_col=url_col, caption_col=caption_col, number_sample_per_shard=shard_size, enable_wandb=False,
            timeout=timeout, retries=retries, distributor="multiprocessing", compute_hash=None,
        )
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    sizes = _collect_sizes(out)
    write_json_atomic(out / "sizes.json", sizes)
    meta = {"kind": "laion", "parquet": str(parquet), "num_rows": used, "num_success": sum(sizes.values()),
            "image_size": image_size, "url_col": url_col, "caption_col": caption_col,
            "shard_size": shard_size, "resize_mode": resize_mode, "img2dataset_version":
            getattr(img2dataset, "__version__", "unknown")}
    return write_meta(out, meta)
