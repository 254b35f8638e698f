"""Dataset kinds of the ALBERT recipes: JSON-lines, Hugging Face directories and streamed HTTP shards."""
from __future__ import annotations

import functools
import http.server
import itertools
import json
import random
import threading
from pathlib import Path

import pytest

from crowdtrain.trainers.corpus import is_heldout, load_corpus
from crowdtrain.trainers.shards import ShardedCorpus

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()


def _paragraphs(count: int, offset: int = 0) -> list[str]:
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(8 + i % 5)) + f" number {i + offset}."
            for i in range(count)]


def test_jsonl_corpus(tmp_path: Path):
    texts = _paragraphs(40)
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.jsonl").write_text("\n".join(json.dumps({"body": t, "id": i}) for i, t in enumerate(texts[:25])))
    (tmp_path / "parts" / "b.jsonl").write_text("\n\n".join(json.dumps({"body": t}) for t in texts[25:]) + "\n")
    corpus = load_corpus({"kind": "jsonl", "paths": [str(tmp_path / "parts")], "text_field": "body"})
    assert sorted(corpus.train + corpus.heldout) == sorted(texts)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": texts[0]}) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2 is not a JSON object with a string field 'body'"):
        load_corpus({"kind": "jsonl", "paths": [str(tmp_path / "bad.jsonl")], "text_field": "body"})
    with pytest.raises(ValueError, match="no such file"):
        load_corpus({"kind": "jsonl", "paths": [str(tmp_path / "missing.jsonl")]})


def test_hf_dataset_corpus_or_a_clear_error(tmp_path: Path):
    try:
        import datasets
    except ImportError:
        with pytest.raises(ValueError, match="pip install datasets"):
            load_corpus({"kind": "hf-dataset", "path": str(tmp_path)})
        return
    texts = _paragraphs(30)
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "saved"))
    corpus = load_corpus({"kind": "hf-dataset", "path": str(tmp_path / "saved")})
    assert sorted(corpus.train + corpus.heldout) == sorted(texts)


def test_stream_shuffles_per_seed():
    corpus = load_corpus({"kind": "stdlib-docstrings", "max_bytes": 20_000})
    first = list(itertools.islice(corpus.stream(random.Random(1)), 10))
    assert first == list(itertools.islice(corpus.stream(random.Random(1)), 10))
    assert first != list(itertools.islice(corpus.stream(random.Random(2)), 10))
    assert set(first) <= set(corpus.train)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def shard_server(tmp_path: Path):
    """Four text shards served over HTTP on 127.0.0.1 (closed after the test)."""
    shards = [_paragraphs(50, offset=100 * s) for s in range(4)]
    for index, paragraphs in enumerate(shards):
        (tmp_path / f"shard-{index}.txt").write_text("\n\n".join(paragraphs) + "\n")
    requests: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield base, shards, requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_http_shards_are_streamed_per_peer(shard_server):
    base, shards, requests = shard_server
    urls = [f"{base}/shard-{i}.txt" for i in range(4)]
    corpus = load_corpus({"kind": "http-shards", "urls": urls, "max_bytes": 2_000})
    assert isinstance(corpus, ShardedCorpus)
    assert set(corpus.train) | set(corpus.heldout) <= set(shards[0])  # the sample: the first 2 kB
    assert requests == ["/shard-0.txt"]
    stream = corpus.stream(random.Random(5))
    texts = list(itertools.islice(stream, 120))  # less than three shards: not everything is read
    everything = {t for shard in shards for t in shard}
    assert set(texts) <= everything and not any(is_heldout(t) for t in texts)
    assert 2 <= len(requests) - 1 <= 3
    other = list(itertools.islice(corpus.stream(random.Random(6)), 120))
    assert other != texts  # each peer its own shard order


def test_http_shard_errors(shard_server):
    base, _, _ = shard_server
    with pytest.raises(ValueError, match="not an http"):
        load_corpus({"kind": "http-shards", "urls": ["ftp://example.org/x.txt"]})
    corpus = load_corpus({"kind": "http-shards", "urls": [f"{base}/missing.txt"]})
    with pytest.raises(ValueError, match="cannot read .*missing.txt"):
        corpus.heldout
    with pytest.raises(ValueError, match="no training text could be read"):
        next(corpus.stream(random.Random(0)))
