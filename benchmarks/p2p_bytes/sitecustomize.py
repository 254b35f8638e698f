"""Per-process counts of what hivemind sends over libp2p, by RPC and by DHT key (bench_dht_traffic.py).

Loaded by every Python process whose PYTHONPATH holds this folder and whose environment sets
``CROWDTRAIN_P2P_COUNTS`` to a directory: it wraps hivemind's P2P calls and DHT get/store once the
modules are imported, and writes ``<pid>.json`` there every few seconds and at exit. It counts protobuf
payload bytes (libp2p, yamux and TCP add their own), for attribution only; the benchmarks' byte
figures come from network counters."""
import atexit
import collections
import importlib.abc
import importlib.util
import json
import os
import sys
import threading
import time

OUT = os.environ.get("CROWDTRAIN_P2P_COUNTS")
DUMP_PERIOD_S = 5.0

counts: collections.Counter = collections.Counter()
lock = threading.Lock()


def add(key: str, amount: int) -> None:
    with lock:
        counts[key] += amount


def dump() -> None:
    with lock:
        data = dict(counts)
    with open(os.path.join(OUT, f"{os.getpid()}.json"), "w") as f:
        json.dump({"argv": sys.argv, "counts": data}, f)


def dump_periodically() -> None:
    while True:
        time.sleep(DUMP_PERIOD_S)
        dump()


def after_fork_in_child() -> None:  # hivemind forks its DHT and averager processes: count them apart
    global lock
    lock = threading.Lock()
    counts.clear()
    threading.Thread(target=dump_periodically, daemon=True).start()


def patch_p2p(module) -> None:
    P2P = module.P2P
    call_unary, add_unary, send_protobuf = (P2P._call_unary_protobuf_handler, P2P._add_protobuf_unary_handler,
                                            P2P.send_protobuf)

    async def counted_call(self, peer_id, handle_name, request, output_type):
        add(f"sent {handle_name} request", request.ByteSize())
        add(f"rpc {handle_name}", 1)  # each call is a new libp2p stream: its overhead on the wire is per call
        return await call_unary(self, peer_id, handle_name, request, output_type)

    async def counted_add(self, handle_name, handler, input_type, balanced=False):
        async def counted(request, context):
            response = await handler(request, context)
            add(f"sent {handle_name} response", response.ByteSize())
            if getattr(request, "keys", None):  # DHT find / store: by the first key's DHTID
                key = f"{bytes(request.keys[0]).hex()} {handle_name.rsplit('.', 1)[-1]}"
                add(f"key {key}", response.ByteSize() if handle_name.endswith("rpc_find") else request.ByteSize())
                add(f"rpckey {key}", 1)
            return response
        return await add_unary(self, handle_name, counted, input_type, balanced)

    async def counted_send(protobuf, writer):  # streams: all-reduce parts, state downloads, matchmaking
        if hasattr(protobuf, "ByteSize"):
            add(f"sent stream {type(protobuf).__name__}", protobuf.ByteSize())
        return await send_protobuf(protobuf, writer)

    P2P._call_unary_protobuf_handler, P2P._add_protobuf_unary_handler = counted_call, counted_add
    P2P.send_protobuf = staticmethod(counted_send)
    threading.Thread(target=dump_periodically, daemon=True).start()
    atexit.register(dump)
    os.register_at_fork(after_in_child=after_fork_in_child)


def patch_dht(module) -> None:
    DHT = module.DHT
    get, store = DHT.get, DHT.store

    def counted_get(self, key, *args, **kwargs):
        add(f"name {key}", 0)
        add(f"dht.get {key}", 1)
        return get(self, key, *args, **kwargs)

    def counted_store(self, key, *args, **kwargs):
        add(f"name {key}", 0)
        add(f"dht.store {key}", 1)
        return store(self, key, *args, **kwargs)

    DHT.get, DHT.store = counted_get, counted_store


class _PatchOnImport(importlib.abc.MetaPathFinder):
    PATCHES = {"hivemind.p2p.p2p_daemon": patch_p2p, "hivemind.dht.dht": patch_dht}

    def __init__(self):
        self.pending = dict(self.PATCHES)

    def find_spec(self, name, path, target=None):
        patch = self.pending.pop(name, None)
        if patch is None:
            return None
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)
        spec.loader.exec_module = exec_and_patch
        return spec


if OUT:
    sys.meta_path.insert(0, _PatchOnImport())
