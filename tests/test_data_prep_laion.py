"""LAION ingestion end to end against a loopback HTTP server serving rendered images."""
import functools
import importlib.util
import http.server
import json
import threading

import pytest

from data_prep.cli import main as cli_main
from data_prep.laion import download, validate_parquet
from data_prep.render import render_scene

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow not installed (optional extra 'laion')")
pa = pytest.importorskip("pyarrow")


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "www"
    root.mkdir()
    for i, name in enumerate(["dog", "pizza", "car", "apple", "bus"]):
        img, _ = render_scene([name], [0.6], "slots", 96, "plain", seed=i)
        img.save(root / f"{i}.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _parquet(path, base):
    rows = [(f"{base}/{i}.png", f"a photo of image {i}") for i in range(5)]
    rows.insert(2, (f"{base}/missing.png", "a 404"))
    pq.write_table(pa.table({"url": [r[0] for r in rows], "caption": [r[1] for r in rows]}), path)
    return rows


@pytest.mark.slow  # ~20 s: img2dataset spawns a logger process and a pool that re-import it
def test_loopback_download(server, tmp_path):
    if importlib.util.find_spec("img2dataset") is None:  # find_spec: importing it would run albumentations'
        pytest.skip("img2dataset not installed (optional extra 'laion')")  # update check
    import webdataset as wds

    rows = _parquet(tmp_path / "in.parquet", server)
    meta = download(tmp_path / "in.parquet", tmp_path / "out", num_samples=5, image_size=32, shard_size=3)
    assert meta["num_rows"] == 5 and meta["num_success"] == 4  # row 2 is a 404, row 5 is past the cap
    sizes = json.loads((tmp_path / "out" / "sizes.json").read_text())
    assert sizes == {"00000.tar": 2, "00001.tar": 2}
    samples = list(wds.WebDataset(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")),
                                  shardshuffle=False).decode("pil"))
    assert len(samples) == 4
    expected = {r[1] for r in rows[:5] if "missing" not in r[0]}
    assert {s["txt"] for s in samples} == expected
    for s in samples:
        assert s["jpg"].size == (32, 32)
        assert s["json"]["status"] == "success" and s["json"]["caption"] == s["txt"]
        assert s["json"]["key"] == s["__key__"]


def test_bad_parquet_and_cli_errors(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match="not a readable parquet"):
        validate_parquet(bad)
    pq.write_table(pa.table({"URL": ["x"], "TEXT": ["y"]}), tmp_path / "cols.parquet")
    with pytest.raises(ValueError, match="lacks column"):
        validate_parquet(tmp_path / "cols.parquet")
    assert validate_parquet(tmp_path / "cols.parquet", "URL", "TEXT") == 1
    with pytest.raises(SystemExit) as e:
        cli_main(["laion", "--parquet", str(bad), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "--parquet" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
